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
    assert summary["probes"]["config"]["device"] == "cpu"  # diff -> ProbeConfig
    assert summary["geometry"]["config"]["device"] == "cpu"  # diff -> GeometryConfig
    assert summary["probes"]["rows"]
    (sae_info,) = (out / "artefacts").glob("sae-*/a/lensbias.json")
    assert json.loads(sae_info.read_text())["config"]["device"] == "cpu"  # diff -> SAEConfig


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


# --- probes and SAEs on the device -----------------------------------------------------

def _data(k, d=24, n=500, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * rng.uniform(0.1, 5, d) + rng.normal(size=d)).astype(np.float32)
    y = rng.integers(0, k, n)
    X[np.arange(n), y % d] += 1.5
    return X, y


@pytest.mark.parametrize("k", [2, 4])
def test_probe_on_cpu_is_the_default_and_one_batched_solve(k):
    """device='cpu' is the default path, bit for bit, and LinearProbe.fit is a batch of one
    of probes.batched.fit_batch."""
    from lensbias.probes.batched import Problem
    from lensbias.probes.fast import LinearProbe, fit_batch

    X, y = _data(k)
    default = LinearProbe(C=0.5, max_iter=200).fit(X, y)
    probe = LinearProbe(C=0.5, max_iter=200, device="cpu").fit(X[:, :], y)
    (batched,) = fit_batch([Problem(X, y, 0.5)], max_iter=200, device="cpu")
    assert probe.get_params()["device"] == "cpu"
    for fitted in (default, probe):
        assert fitted.n_iter_ == batched.n_iter_
        assert np.array_equal(fitted.coef_std_, batched.coef_std_)
        assert np.array_equal(fitted.intercept_std_, batched.intercept_std_)
        assert isinstance(fitted.coef_, np.ndarray) and fitted.coef_.dtype == np.float32
    assert np.array_equal(default.coef_, probe.coef_)
    assert np.array_equal(default.intercept_, probe.intercept_)
    assert probe.score(X, y) > 1.2 / k  # above chance: it learned something


@pytest.mark.parametrize("device, message", BAD)
def test_probe_bad_device_is_a_clear_error(device, message):
    from lensbias.errors import LensbiasError
    from lensbias.probes.fast import LinearProbe

    X, y = _data(2)
    with pytest.raises(LensbiasError, match=message):
        LinearProbe(device=device).fit(X, y)
    with pytest.raises(LensbiasError, match=message):
        LinearProbe().set_params(device=device).fit(X, y)


def test_probe_config_device_reaches_every_probe():
    from lensbias.probes.pair import ProbeConfig, _probe

    assert ProbeConfig().device == "cpu"
    assert _probe(ProbeConfig(), 1.0).device == "cpu"
    assert _probe(ProbeConfig(device="cuda:3"), 0.1).device == "cuda:3"  # fit checks it


@pytest.mark.parametrize("device, message", BAD)
def test_sae_bad_device_is_a_clear_error(cache_file, device, message):
    from lensbias.errors import LensbiasError
    from lensbias.saes import SAEConfig, train_sae
    from lensbias.store import ActivationStore

    with ActivationStore(cache_file) as store:
        with pytest.raises(LensbiasError, match=message):
            train_sae(store, store.hooks[0], SAEConfig(device=device, training_tokens=256,
                                                       batch_size=64))


@pytest.mark.skipif(__import__("shutil").which("nvidia-smi") is not None,
                    reason="this machine has nvidia-smi: gpu.sh would run for real")
def test_gpu_script_refuses_a_machine_without_cuda(tmp_path):
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu.sh"
    assert os.access(script, os.X_OK)
    out = tmp_path / "gpu"
    env = {**os.environ, "LENSBIAS_GPU_OUT": str(out), "LENSBIAS_GPU_VENV": str(tmp_path / "v")}
    done = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 3
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert "no CUDA GPU" in done.stderr
    assert not out.exists() and not (tmp_path / "v").exists()  # nothing made
