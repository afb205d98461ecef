"""The store, version 2: length-sorted batching, checksums, bfloat16, label-set names with
``/``, SIGTERM and lock clean-up, token-counting progress, --threads, the cache CLI's
defaults, and the CoNLL-U reader's SpaceAfter rule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import CORPUS, make_lm, model_folder, slow_writer_script, word_dataset
from lensbias.cli import main
from lensbias.concepts.schema import ConceptDataset, Example, Span
from lensbias.errors import LensbiasError
from lensbias.store import ActivationStore, CacheConfig, cache_activations, verify
from lensbias.store import writer
from lensbias.store.writer import Window, length_batches

VARIED = [" ".join(CORPUS[i % len(CORPUS)].split()[: 1 + (i * 7) % 11]) for i in range(40)]
"""Examples of many different lengths, in an order that is not sorted by length."""


def _contents(path: Path) -> dict:
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda k, v: out.__setitem__(k, (v[()], dict(v.attrs)))
                     if isinstance(v, h5py.Dataset) else None)
    return out


def test_length_batches_cut_padding_and_cover_every_window():
    lengths = [3, 40, 5, 39, 4, 41, 6, 38] * 8
    windows = [Window(0, [1] * n, [], 0) for n in lengths]
    batches = length_batches(windows, budget=200)
    assert sorted(i for b in batches for i in b) == list(range(len(windows)))
    for b in batches:
        widths = [lengths[i] for i in b]
        assert len(b) * max(widths) <= 200 or len(b) == 1
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.10
    # dataset order batches (the old writer: 16 in a row) pad far more
    old = sum(16 * max(lengths[i:i + 16]) for i in range(0, len(lengths), 16))
    assert 1 - sum(lengths) / old > 0.4


def test_sorted_batches_write_rows_at_their_own_offsets(tiny_lm, tmp_path):
    """Batching by length changes which windows share a forward pass, not the file: every
    dataset equals that of one-window batches (activations to float32 rounding)."""
    data = word_dataset(VARIED)
    one = _contents(cache_activations(tiny_lm, data, tmp_path / "one.h5",
                                      CacheConfig(dtype="float32", batch_size=1)))
    many = _contents(cache_activations(tiny_lm, data, tmp_path / "many.h5",
                                       CacheConfig(dtype="float32", batch_size=8)))
    assert one.keys() == many.keys()
    for key in one:
        a, b = one[key][0], many[key][0]
        if key.startswith("acts/"):
            np.testing.assert_allclose(a, b, atol=1e-5)
        else:
            assert np.array_equal(a, b), key
        assert str(one[key][1]) == str(many[key][1]), key
    with ActivationStore(tmp_path / "many.h5") as store:  # rows in dataset order
        ex = store.tokens()["example"]
        assert (np.diff(ex) >= 0).all() and set(ex) == set(range(len(VARIED)))


def test_builtin_dataset_padding_under_ten_percent():
    from lensbias.concepts.registry import load_dataset
    from lensbias.models import load_model

    lm = load_model("tiny-mixed")
    hooks = tuple(writer.adapter.default_hooks(lm.model))
    budget = 16 * 256
    data = load_dataset("ud-ewt", max_examples=1500)
    pool = writer.pool_size(lm, hooks, "float16", budget)
    assert 4 * budget <= pool <= 8 * budget
    real = padded = 0
    for chunk in writer._pools(writer.iter_windows(lm, data, 256), pool):
        ws = [w for w, _ in chunk]
        for b in length_batches(ws, budget):
            real += sum(len(ws[i].ids) for i in b)
            padded += len(b) * max(len(ws[i].ids) for i in b)
    assert 1 - real / padded < 0.10


def test_bfloat16_round_trip(tiny_lm, small_dataset, tmp_path):
    f32 = cache_activations(tiny_lm, small_dataset, tmp_path / "f32.h5",
                            CacheConfig(dtype="float32"))
    bf = cache_activations(tiny_lm, small_dataset, tmp_path / "bf.h5",
                           CacheConfig(dtype="bfloat16"))
    hook = "blocks.1.hook_resid_post"
    with h5py.File(bf) as f:
        assert f[f"acts/{hook}"].dtype == np.uint16
        assert f[f"acts/{hook}"].attrs["storage"] == "bfloat16"
    with ActivationStore(f32) as a, ActivationStore(bf) as b:
        exact = a.activations(hook)
        got = b.activations(hook)
        assert got.dtype == np.float32
        want = torch.from_numpy(exact).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(got, want)
        batched = np.concatenate([x for x, _ in b.iter_batches(hook, batch_tokens=7)])
        np.testing.assert_array_equal(batched, want)


def test_label_set_names_with_slashes_round_trip(tiny_lm, tmp_path):
    text = "open <b> tag </b> close"
    spans = (Span(5, 8, {"tag</b>": "open", "a/b/c": "x"}), Span(13, 17, {"tag</b>": "close"}))
    data = ConceptDataset("html", (Example("e0", text, spans, {"domain": "user", "x/y": "1"}),))
    out = cache_activations(tiny_lm, data, tmp_path / "html.h5")
    with h5py.File(out) as f:
        assert "labels/tag<%2Fb>" in f and "examples/labels/x%2Fy" in f
    with ActivationStore(out) as store:
        assert {"tag</b>", "a/b/c", "x/y"} <= set(store.label_sets)
        assert store.classes("tag</b>") == ["close", "open"]
        assert (store.labels("tag</b>") >= 0).sum() >= 2
        assert set(store.labels("x/y")) == {0}
        with pytest.raises(LensbiasError, match="no concept"):
            store.labels("tag<")


def test_zeroed_bytes_are_one_line_on_verify_and_read(bpe, tmp_path, capsys):
    lm = make_lm(bpe)
    out = cache_activations(lm, word_dataset(CORPUS * 40), tmp_path / "c.h5",
                            CacheConfig(dtype="float32"))
    assert main(["cache", "--verify", str(out)]) == 0
    assert "ok" in capsys.readouterr().out
    size = out.stat().st_size
    assert size > 400_000
    n = min(200_000, size // 4)
    with open(out, "r+b") as f:
        f.seek(size // 2 - n // 2)
        f.write(b"\0" * n)
    assert main(["cache", "--verify", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and "checksum" in err[0].lower(), err
    with ActivationStore(out) as store, pytest.raises(LensbiasError, match="damaged"):
        for hook in store.hooks:
            store.activations(hook)


def test_version_1_file_stays_readable_but_cannot_be_verified(tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    with h5py.File(out, "a") as f:
        f.attrs["encoding-version"] = "1"
    with ActivationStore(out) as store:
        assert store.activations("blocks.0.hook_resid_post").shape[0] == store.n_tokens
        assert "kind" in store.label_sets
    with pytest.raises(LensbiasError, match="version 1"):
        verify(out)


def test_lock_file_is_removed(tiny_lm, small_dataset, tmp_path):
    cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")  # reuse path too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    out = tmp_path / "term.h5"
    script = slow_writer_script(out, 'batch_size=1, window=8, dtype="float32"',
                                extra="writer.POOL_BYTES = 1")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for _ in range(3):  # rows are being written
        assert proc.stdout.readline().startswith("batch")
    assert list(tmp_path.glob(".term.h5.tmp-*"))
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []  # no temporary file, no lock, no target


def test_progress_counts_tokens(tiny_lm, small_dataset, tmp_path, monkeypatch):
    counted = []

    class Bar:
        def update(self, n):
            counted.append(n)

        def set_postfix_str(self, *_a, **_k):
            pass

        def close(self):
            pass

    monkeypatch.setattr(writer, "_progress", lambda *a, **k: Bar())
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    with ActivationStore(out) as store:
        assert sum(counted) == store.n_tokens > len(small_dataset.examples)


def test_long_example_aligns_each_window_on_its_own_spans(bpe, tmp_path, monkeypatch):
    """One long example cut into many windows: labels as aligning the whole example at
    once, while each window is aligned against the spans that reach it only (the cost is
    no longer windows x spans)."""
    from lensbias.concepts.align import align_labels

    text = " ".join(CORPUS * 30)
    data = word_dataset([text])
    seen = []
    real = writer.align_labels

    def counting(spans, offsets, label_set):
        seen.append(len(spans))
        return real(spans, offsets, label_set)

    monkeypatch.setattr(writer, "align_labels", counting)
    monkeypatch.setattr(writer._Columns, "LONG", 8)
    lm = make_lm(bpe)
    out = cache_activations(lm, data, tmp_path / "long.h5", CacheConfig(window=16))
    n_spans = len(data.examples[0].spans)
    assert sum(seen) < 4 * n_spans  # windows x spans would be ~ n_windows times more
    enc = lm.tokenizer.encode(text)
    with ActivationStore(out) as store:
        classes = store.classes("kind")
        got = [classes[c] if c >= 0 else None for c in store.labels("kind")]
    assert got == align_labels(data.examples[0].spans, enc.offsets[1:], "kind")


@pytest.mark.parametrize("command", ["cache", "diff", "compress", "summary", "sweep"])
def test_threads_option_on_every_model_command(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--threads" in capsys.readouterr().out


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    torch.set_num_threads(2)
    try:
        main(["cache", "--verify", str(tmp_path / "missing.h5"), "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_sweep_config_threads_field():
    from lensbias.sweep.config import sweep_config_from_dict

    raw = {"models": ["tiny-mixed"], "methods": [{"name": "magnitude", "levels": [0.5]}]}
    assert sweep_config_from_dict(raw).threads is None
    assert sweep_config_from_dict({**raw, "threads": 2}).threads == 2
    with pytest.raises(LensbiasError, match="threads"):
        sweep_config_from_dict({**raw, "threads": 0})


def test_cache_default_name_is_the_file_stem(bpe, tmp_path, monkeypatch, capsys):
    folder = model_folder(tmp_path / "m", bpe)
    work = tmp_path / "work"
    work.mkdir()
    data = tmp_path / "nodomain.jsonl"
    data.write_text(json.dumps({"text": "def add(a, b): return a"}) + "\n")
    monkeypatch.chdir(work)
    assert main(["cache", str(folder), "--dataset", "../nodomain.jsonl", "-q"]) == 0
    assert [p.name for p in (work / "activations").iterdir()] == ["m--nodomain.h5"]


CONLLU = """# sent_id = s1
# text = {text}
1\tDo\tdo\tAUX\t_\t_\t0\troot\t_\t{misc}
2\tit\tit\tPRON\t_\t_\t1\tobj\t_\tSpaceAfter=No
3\t!\t!\tPUNCT\t_\t_\t1\tpunct\t_\t_
"""


def _spans(text: str, misc: str = "_"):
    from lensbias.concepts.conllu import read_sentences, sentence_spans

    sentence = next(read_sentences(CONLLU.format(text=text, misc=misc).splitlines()))
    return [(s.start, s.end) for s in sentence_spans(sentence, text)]


def test_conllu_respects_space_after():
    assert _spans("Do it!") == [(0, 2), (3, 5), (5, 6)]
    assert _spans("Doit!", misc="SpaceAfter=No") == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.parametrize("text, misc, what", [
    ("Do it !", "_", "has SpaceAfter=No"),      # a space the words say is not there
    ("Doit!", "_", "without a space"),           # a missing space
    ("Do it!", "SpaceAfter=No", "has SpaceAfter=No"),
    ("Do so it!", "_", "is not at character"),   # text no word spells (find skipped it)
    ("Do it! Yes", "_", "goes on after the last word"),
])
def test_conllu_mismatch_fails_loudly(text, misc, what):
    with pytest.raises(LensbiasError, match="sentence s1") as err:
        _spans(text, misc)
    assert what in str(err.value)


def test_threads_zero_is_one_line(capsys):
    assert main(["cache", "--verify", "x.h5", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads" in err[0], err
