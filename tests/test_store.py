"""The activation store: round trip against TransformerLens, fingerprints, interrupted writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import make_lm, slow_writer_script, word_dataset
from lensbias.concepts.align import align_labels
from lensbias.errors import LensbiasError
from lensbias.store import ActivationStore, CacheConfig, cache_activations, read_fingerprint


def test_round_trip_matches_run_with_cache(tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5",
                            CacheConfig(dtype="float32", batch_size=5))
    with ActivationStore(out) as store:
        assert store.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        tokens = store.tokens()
        acts = store.activations("blocks.1.hook_resid_post")
        assert acts.shape == (store.n_tokens, 36)
        for index in (0, 5, 11):
            ex = small_dataset.examples[index]
            enc = tiny_lm.tokenizer.encode(ex.text)
            _, ref = tiny_lm.model.run_with_cache(torch.tensor([enc.ids]))
            rows = tokens["example"] == index
            # stored rows are the example's real tokens, in order, BOS dropped
            assert tokens["ids"][rows].tolist() == enc.ids[1:]
            assert tokens["offsets"][rows].tolist() == [list(o) for o in enc.offsets[1:]]
            np.testing.assert_allclose(acts[rows], ref["blocks.1.hook_resid_post"][0, 1:].numpy(),
                                       atol=1e-5)


def test_labels_follow_alignment_rule(tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    with ActivationStore(out) as store:
        assert {"kind", "initial", "freq_bucket", "domain"} <= set(store.label_sets)
        classes = store.classes("kind")
        labels = store.labels("kind")
        example = store.tokens()["example"]
        for index in (0, 1):
            ex = small_dataset.examples[index]
            enc = tiny_lm.tokenizer.encode(ex.text)
            expected = align_labels(ex.spans, enc.offsets[1:], "kind")
            got = [classes[c] if c >= 0 else None for c in labels[example == index]]
            assert got == expected
        domain = np.asarray(store.classes("domain"))[store.labels("domain")]
        assert set(domain[example == 1]) == {"code"} and set(domain[example == 0]) == {"prose"}


def test_frequency_bucket_uses_model_counts(tiny_lm, small_dataset, tmp_path):
    # the fixture's counts fall with the token id: low ids are common, high ids rare
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    with ActivationStore(out) as store:
        ids = store.tokens()["ids"]
        bucket = np.asarray(store.classes("freq_bucket"))[store.labels("freq_bucket")]
        assert ids[bucket == "common"].max() < ids[bucket == "rare"].min()


def test_long_examples_are_windowed_without_loss(bpe, tmp_path):
    lm = make_lm(bpe, n_ctx=64)
    long_text = " ".join(["the cat sat on the mat"] * 30)
    data = word_dataset([long_text])
    n_real = len(bpe.encode(long_text).ids) - 1
    assert n_real > 64
    out = cache_activations(lm, data, tmp_path / "w.h5", CacheConfig(window=16, dtype="float32"))
    with ActivationStore(out) as store:
        tokens = store.tokens()
        assert store.n_tokens == n_real
        assert tokens["position"].tolist() == list(range(n_real))
        # the second window starts afresh with BOS: its first token equals a BOS-prefixed run
        ids = [bpe.bos_id, *tokens["ids"][15:30].tolist()]
        _, ref = lm.model.run_with_cache(torch.tensor([ids]))
        np.testing.assert_allclose(store.activations("blocks.0.hook_resid_post")[15:30],
                                   ref["blocks.0.hook_resid_post"][0, 1:].numpy(), atol=1e-5)


def test_write_buffers_do_not_change_the_file(tiny_lm, small_dataset, tmp_path, monkeypatch):
    """The streaming writer flushes in blocks; a flush after every batch, and token columns
    flushed every 7 rows, give the same file. Every listed label class occurs."""
    import lensbias.store.writer as writer

    def contents(path):
        out = {}
        with h5py.File(path) as f:
            f.visititems(lambda k, v: out.__setitem__(k, (v[()].tolist(), dict(v.attrs)))
                         if isinstance(v, h5py.Dataset) else None)
        return out

    config = CacheConfig(dtype="float32", batch_size=3)
    big = contents(cache_activations(tiny_lm, small_dataset, tmp_path / "big.h5", config))
    monkeypatch.setattr(writer._Columns, "CHUNK", 7)
    monkeypatch.setattr(writer._Acts, "BUFFER_BYTES", 1)
    small = contents(cache_activations(tiny_lm, small_dataset, tmp_path / "small.h5", config))
    assert small.keys() == big.keys() and small == big
    labels = [k for k in big if k.startswith("labels/")]
    assert len(labels) >= 2
    for key in labels:
        codes, attrs = np.asarray(big[key][0]), big[key][1]
        classes = json.loads(attrs["classes"])
        assert classes == sorted(classes)
        assert set(np.unique(codes[codes >= 0]).tolist()) == set(range(len(classes))), key


def test_same_fingerprint_reuses_file(tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    stamp = out.stat().st_mtime_ns
    time.sleep(0.01)
    cache_activations(tiny_lm, small_dataset, out)
    assert out.stat().st_mtime_ns == stamp


def test_changed_dataset_or_model_is_refused(bpe, tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    other_data = word_dataset(["a different text entirely"])
    with pytest.raises(LensbiasError, match="dataset_sha256"):
        cache_activations(tiny_lm, other_data, out)
    with pytest.raises(LensbiasError, match="model_weights_sha256"):
        cache_activations(make_lm(bpe, seed=1), small_dataset, out)
    cache_activations(tiny_lm, other_data, out, force=True)
    with ActivationStore(out) as store:
        assert store.n_tokens == len(bpe.encode("a different text entirely").ids) - 1


def test_float16_halves_storage(tiny_lm, small_dataset, tmp_path):
    a = cache_activations(tiny_lm, small_dataset, tmp_path / "32.h5", CacheConfig(dtype="float32"))
    b = cache_activations(tiny_lm, small_dataset, tmp_path / "16.h5", CacheConfig(dtype="float16"))
    with ActivationStore(a) as s32, ActivationStore(b) as s16:
        x32 = s32.activations("blocks.1.hook_resid_post")
        x16 = s16.activations("blocks.1.hook_resid_post")
        assert s16._acts("blocks.1.hook_resid_post").dtype == np.float16
        np.testing.assert_allclose(x16, x32, rtol=2e-3, atol=2e-3)
        assert not np.array_equal(x16, x32)


def test_iter_batches_is_bounded_and_complete(tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    with ActivationStore(out) as store:
        batches = list(store.iter_batches("blocks.0.hook_resid_post", "kind", batch_tokens=7))
        assert max(len(lab) for _, lab in batches) <= 7
        acts = np.concatenate([a for a, _ in batches])
        labels = np.concatenate([lab for _, lab in batches])
        ref_acts, ref_labels = store.load("blocks.0.hook_resid_post", "kind")
        np.testing.assert_array_equal(acts, ref_acts)
        np.testing.assert_array_equal(labels, ref_labels)
        assert (labels >= 0).all()


def test_unknown_hook_and_concept_are_named(tiny_lm, small_dataset, tmp_path):
    with pytest.raises(LensbiasError, match="no hook 'blocks.9.hook_resid_post'"):
        cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5",
                          CacheConfig(hooks=("blocks.9.hook_resid_post",)))
    assert not (tmp_path / "a.h5").exists()
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5",
                            CacheConfig(hooks=("blocks.0.attn.hook_z",)))
    with ActivationStore(out) as store:
        assert store.d("blocks.0.attn.hook_z") == 3 * 12  # [n_heads, d_head] flattened
        with pytest.raises(LensbiasError, match="no concept 'upos'"):
            store.labels("upos")


def test_relative_block_index_names_the_last_blocks(tiny_lm, small_dataset, tmp_path):
    """blocks.-1 is the last block whatever the depth, so a student and its teacher share it."""
    hooks = ("blocks.-1.hook_resid_post", "blocks.-2.hook_resid_post")
    rel = cache_activations(tiny_lm, small_dataset, tmp_path / "r.h5",
                            CacheConfig(hooks=hooks, dtype="float32"))
    ab = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5", CacheConfig(dtype="float32"))
    with ActivationStore(rel) as r, ActivationStore(ab) as a:
        assert r.hooks == list(hooks)
        np.testing.assert_array_equal(r.activations(hooks[0]),
                                      a.activations("blocks.1.hook_resid_post"))
        np.testing.assert_array_equal(r.activations(hooks[1]),
                                      a.activations("blocks.0.hook_resid_post"))
    with pytest.raises(LensbiasError, match="counts 3 blocks back, but the model has 2"):
        cache_activations(tiny_lm, small_dataset, tmp_path / "b.h5",
                          CacheConfig(hooks=("blocks.-3.hook_resid_post",)))
    assert not (tmp_path / "b.h5").exists()


def test_truncated_file_is_detected(tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 3])
    with pytest.raises(LensbiasError, match="truncated or corrupt"):
        ActivationStore(out)
    with pytest.raises(LensbiasError, match="--force"):
        cache_activations(tiny_lm, small_dataset, out)
    cache_activations(tiny_lm, small_dataset, out, force=True)
    assert read_fingerprint(out)["hooks"]


def test_incomplete_flag_is_refused(tiny_lm, small_dataset, tmp_path):
    out = cache_activations(tiny_lm, small_dataset, tmp_path / "a.h5")
    with h5py.File(out, "a") as f:
        f.attrs["complete"] = 0
    with pytest.raises(LensbiasError, match="incomplete"):
        ActivationStore(out)


def test_killed_writer_leaves_nothing_readable(bpe, tmp_path):
    out = tmp_path / "killed.h5"
    script = slow_writer_script(out, 'batch_size=2, dtype="float32"')
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for _ in range(3):  # wait until rows are being written
        assert proc.stdout.readline().startswith("batch")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = list(tmp_path.glob(".killed.h5.tmp-*"))
    assert leftovers, "the killed writer should have left its temporary file"
    with pytest.raises(LensbiasError):
        ActivationStore(leftovers[0])
    lm = make_lm(bpe)
    data = word_dataset(__import__("conftest").CORPUS * 3)
    cache_activations(lm, data, out, CacheConfig(batch_size=2, dtype="float32"))
    assert not list(tmp_path.glob(".killed.h5.tmp-*"))
    ref = cache_activations(lm, data, tmp_path / "ref.h5", CacheConfig(batch_size=2, dtype="float32"))
    with ActivationStore(out) as a, ActivationStore(ref) as b:
        np.testing.assert_array_equal(a.activations("blocks.1.hook_resid_post"),
                                      b.activations("blocks.1.hook_resid_post"))
        np.testing.assert_array_equal(a.labels("kind"), b.labels("kind"))
