"""lensbias.threads: a stage in a second thread hands back its value or its error, keeps the
caller's torch thread count, and stops when told."""

from __future__ import annotations

import threading

import pytest
import torch

from lensbias.threads import Cancelled, Overlapped, cpu_cores, spare_core


def test_result_and_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = Overlapped(lambda cancel: (torch.get_num_threads(), cancel.is_set()), "t")
        assert job.result() == (1, False)
        assert job.seconds >= 0 and job.waited >= 0
    finally:
        torch.set_num_threads(before)


def test_error_is_raised_by_result():
    def fail(_cancel):
        raise ValueError("inside")

    job = Overlapped(fail, "t")
    job._thread.join()
    with pytest.raises(ValueError, match="inside"):
        job.check()  # already failed: raised before anyone waits
    with pytest.raises(ValueError, match="inside"):
        job.result()


def test_check_is_silent_while_running():
    release = threading.Event()
    job = Overlapped(lambda cancel: release.wait(10), "t")
    job.check()
    release.set()
    assert job.result() is True


def test_stop_sets_cancel_and_joins():
    running = threading.Event()

    def loop(cancel):
        running.set()
        while not cancel.wait(0.01):
            pass
        raise Cancelled("stopped")

    job = Overlapped(loop, "t")
    assert running.wait(10)
    job.stop(timeout=10)
    assert not job._thread.is_alive()
    with pytest.raises(Cancelled):
        job.result()


def test_spare_core_rule():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cpu_cores())
        assert not spare_core()  # every core taken by the first stage
        torch.set_num_threads(1)
        assert spare_core() is (cpu_cores() >= 2)
    finally:
        torch.set_num_threads(before)
