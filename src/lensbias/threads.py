"""CPU cores, and stages run in a second thread beside the others.

``lensbias diff`` on a 2-core machine runs torch with one intra-op thread (``cli/threads.py``:
two threads spin-wait for each other under load), so one core sat idle through every stage.
The probes read the two activation caches and write only their own artefact; so do the
SAE, geometry and behaviour stages (behaviour also runs the models, which the probes do
not touch). ``Overlapped`` runs those three in a thread of their own with the caller's
torch thread count, hands back their result or re-raises their error, and can be told to
stop (``cancel``) when the main thread fails, so no half-written artefact outlives the run.
torch releases the GIL inside its kernels and h5py serialises its own reads, so the two
threads share the caches safely; none of the stages draws from torch's global RNG (the
SAE's initialisation is seeded inside ``torch.random.fork_rng``; probes, geometry and
behaviour use numpy generators or none), so results do not depend on how the threads
interleave.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def spare_core() -> bool:
    """Whether a second stage with torch's current intra-op thread count fits beside the
    first without oversubscribing the cores (on 2 cores: when torch uses one thread)."""
    import torch

    return 2 * torch.get_num_threads() <= cpu_cores()


class Cancelled(Exception):
    """Raised inside an overlapped stage that was told to stop."""


class Overlapped(Generic[T]):
    """``fn(cancel)`` started now in a daemon thread with the caller's torch thread count.

    ``result()`` waits for it and returns its value (or raises its exception); ``check()``
    raises that exception early, once the thread has failed; ``stop()`` sets ``cancel`` and waits for the thread to notice. ``seconds`` is the stage's own
    running time; ``waited`` how long ``result()`` blocked the caller.
    """

    def __init__(self, fn: Callable[[threading.Event], T], name: str):
        import torch

        self.cancel = threading.Event()
        self.seconds = 0.0
        self.waited = 0.0
        self._value: T | None = None
        self._error: BaseException | None = None
        threads = torch.get_num_threads()

        def run() -> None:
            torch.set_num_threads(threads)  # a new thread starts at torch's default
            start = time.perf_counter()
            try:
                self._value = fn(self.cancel)
            except BaseException as err:  # handed to the caller by result()
                self._error = err
            finally:
                self.seconds = time.perf_counter() - start

        self._thread = threading.Thread(target=run, name=f"lensbias-{name}", daemon=True)
        self._thread.start()

    def result(self) -> T:
        start = time.perf_counter()
        self._thread.join()
        self.waited = time.perf_counter() - start
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def check(self) -> None:
        """Raise the stage's error now if it has already failed (else do nothing)."""
        if not self._thread.is_alive() and self._error is not None:
            raise self._error

    def stop(self, timeout: float = 120.0) -> None:
        """Tell the stage to stop and wait (up to ``timeout`` seconds) until it has."""
        self.cancel.set()
        self._thread.join(timeout)
