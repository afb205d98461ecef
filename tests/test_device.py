"""`--device` on diff, compress and summary, and probes/SAEs on the chosen device.

There is no GPU where these tests run: they check that ``--device cpu`` works through the
same code path, and that a device torch does not know, or ``cuda`` where torch sees none,
is one line, exit 2, before anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import CORPUS, model_folder, word_dataset
from lensbias.cli import main
from lensbias.concepts.jsonl import write_jsonl

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
BAD = [("cdua", "unknown torch device 'cdua'"),
       pytest.param("cuda", "sees no CUDA device", marks=NO_CUDA)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bpe):
    root = tmp_path_factory.mktemp("device")
    model = model_folder(root / "model", bpe)
    data = root / "words.jsonl"
    write_jsonl(word_dataset(CORPUS * 3), data)
    return root, model, data


def _diff_args(model, data, out, device):
    return ["diff", str(model), "--compress", "magnitude:0.5", "-d", str(data), "--out",
            str(out), "--sae-expansion", "2", "--sae-k", "4", "-q", "--device", device]


def test_diff_on_cpu_records_the_device(setup):
    root, model, data = setup
    out = root / "report"
    assert main(_diff_args(model, data, out, "cpu")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["config"]["device"] == "cpu"
    assert summary["probes"]["rows"]


@pytest.mark.parametrize("device, message", BAD)
def test_diff_bad_device_is_one_line(setup, tmp_path, capsys, device, message):
    _, model, data = setup
    out = tmp_path / "r"
    assert main(_diff_args(model, data, out, device)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("device, message", BAD)
def test_compress_bad_device_is_one_line(setup, tmp_path, capsys, device, message):
    _, model, _ = setup
    out = tmp_path / "m"
    assert main(["compress", str(model), "-m", "magnitude", "--sparsity", "0.5", "--no-eval",
                 "-o", str(out), "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_compress_on_cpu(setup, tmp_path):
    _, model, _ = setup
    out = tmp_path / "m"
    assert main(["compress", str(model), "-m", "magnitude", "--sparsity", "0.5", "--no-eval",
                 "-o", str(out), "--device", "cpu"]) == 0
    assert (out / "recipe.json").exists()


@pytest.fixture(scope="module")
def cache_file(setup):
    root, model, data = setup
    out = root / "c.h5"
    assert main(["cache", str(model), "-d", str(data), "-o", str(out), "-q"]) == 0
    return out


def test_summary_on_cpu(cache_file, capsys):
    assert main(["summary", str(cache_file), "--concept", "kind", "--device", "cpu"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("kind"))
    assert all(0.0 <= float(x) <= 1.0 for x in row.split()[2:])


@pytest.mark.parametrize("device, message", BAD)
def test_summary_bad_device_is_one_line(cache_file, capsys, device, message):
    assert main(["summary", str(cache_file), "--concept", "kind", "--device", device]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1, captured.err
    assert captured.out == ""  # refused before the store is read


@NO_CUDA
def test_cuda_refused_in_a_real_process(setup, tmp_path):
    _, model, data = setup
    out = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lensbias", *_diff_args(model, data, out,
                                                                           "cuda")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "sees no CUDA device" in done.stderr
    assert not out.exists()
