"""The command line: success paths on a model folder, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS, make_lm, word_dataset
from lensbias.cli import main
from lensbias.concepts.jsonl import write_jsonl
from lensbias.models import load_model
from lensbias.models.folder import save_folder
from lensbias.store import ActivationStore


@pytest.fixture()
def model_dir(bpe, tmp_path) -> Path:
    lm = make_lm(bpe)
    return save_folder(tmp_path / "model", lm.model, bpe, {"name": "random"}, lm.token_counts,
                       {"MODEL_CARD.md": "# test model\n"})


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "words.jsonl"
    write_jsonl(word_dataset(CORPUS), path)
    return path


def test_folder_model_round_trips(bpe, model_dir):
    lm = make_lm(bpe)
    loaded = load_model(model_dir)
    assert loaded.source == "folder"
    assert loaded.weights_hash() == lm.weights_hash()


def test_cache_then_summary(model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert main(["cache", str(model_dir), "-d", str(data_file), "-o", str(out), "-q"]) == 0
    with ActivationStore(out) as store:
        assert store.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert main(["summary", str(out), "--concept", "kind"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("kind"))
    accuracies = [float(x) for x in row.split()[2:]]
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)


def test_summary_splits_by_document(model_dir, data_file, tmp_path, capsys, monkeypatch):
    """`lensbias summary` draws its test split over the store's document ids (the diff's
    split), not over examples."""
    import numpy as np

    from lensbias.probes import linear
    from lensbias.probes.pair import document_ids

    out = tmp_path / "c.h5"
    assert main(["cache", str(model_dir), "-d", str(data_file), "-o", str(out), "-q"]) == 0
    seen = []
    split = linear.stratified_split
    monkeypatch.setattr(linear, "stratified_split",
                        lambda groups, *a, **k: seen.append(groups) or split(groups, *a, **k))
    assert main(["summary", str(out), "--concept", "kind"]) == 0
    with ActivationStore(out) as store:
        rows = np.flatnonzero(store.labels("kind") >= 0)
        assert len(seen) == 1 and np.array_equal(seen[0], document_ids(store)[rows])


@pytest.mark.parametrize("argv, message", [
    (["cache", "no-such-model", "-d", "ud-ewt"], "unknown model 'no-such-model'"),
    (["cache", "tiny-mixed", "-d", "no-such-data"], "no-such-data"),
    (["summary", "missing.h5"], "does not exist"),
    (["cache"], "MODEL and --dataset are required"),
    (["nonsense-command"], "No such command"),
])
def test_user_errors_are_one_line_exit_2(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lensbias", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lensbias: error:"), proc.stderr
    assert message in lines[0]
    assert not list(tmp_path.rglob("*.h5"))


def test_bad_jsonl_names_the_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    assert main(["cache", str(model_dir), "-d", str(bad), "-o", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2:" in err and err.count("\n") == 1
    assert not (tmp_path / "x.h5").exists()


def test_unwritable_output_folder(model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "missing-dir" / "c.h5"
    assert main(["cache", str(model_dir), "-d", str(data_file), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_hub_name_offline_fails_in_one_line(monkeypatch, capsys, tmp_path):
    """A TransformerLens pretrained name is accepted, and without hub access says so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert main(["cache", "gpt2", "-d", "ud-ewt", "--max-examples", "2", "-q"]) == 2
    err = capsys.readouterr().err
    assert "could not load TransformerLens model 'gpt2' (needs hub access)" in err
    assert err.count("\n") == 1
    assert not list(tmp_path.iterdir())
