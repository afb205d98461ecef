"""Shared fixtures: a tiny random HookedTransformer with a BPE tokenizer, and small datasets.

Shapes are distinct (d_model 36, 3 heads of 12, d_mlp 60, 2 layers) so a transposition
cannot pass unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensbias.concepts.schema import ConceptDataset, Example, Span
from lensbias.models import LoadedModel
from lensbias.models.adapter import build_decoder
from lensbias.models.tokenizer import BPETokenizer

CORPUS = [
    "The cat sat on the mat. The dogs ran in the park.",
    "def add(a, b):\n    return a + b\n",
    "A quick brown fox jumps over the lazy dog while cats sleep.",
    "for i in range(10):\n    print(i * 2)\n",
] * 5


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run faster on one thread, and 2-core CI machines stay responsive."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, vocab_size=300)


def make_lm(tokenizer: BPETokenizer, seed: int = 0, n_ctx: int = 64) -> LoadedModel:
    cfg = dict(n_layers=2, d_model=36, n_heads=3, d_head=12, d_mlp=60,
               d_vocab=tokenizer.vocab_size, n_ctx=n_ctx, act_fn="gelu",
               normalization_type="LN", seed=seed)
    torch.manual_seed(seed)
    model = build_decoder(cfg)
    counts = np.arange(tokenizer.vocab_size)[::-1].astype(np.int64)
    return LoadedModel(f"random-{seed}", model, tokenizer, "test", counts)


def model_folder(folder, tokenizer: BPETokenizer, n_ctx: int = 64):
    """A random test model saved as a lensbias model folder (loadable by path)."""
    from lensbias.models.folder import save_folder

    lm = make_lm(tokenizer, n_ctx=n_ctx)
    return save_folder(folder, lm.model, tokenizer, {"name": "tiny-test"}, lm.token_counts)


@pytest.fixture()
def tiny_lm(bpe: BPETokenizer) -> LoadedModel:
    return make_lm(bpe)


def word_dataset(texts: list[str], name: str = "words") -> ConceptDataset:
    """Every whitespace-separated word labelled: kind=long/short by length, first letter."""
    examples = []
    for i, text in enumerate(texts):
        spans, pos = [], 0
        for word in text.split():
            start = text.index(word, pos)
            pos = start + len(word)
            spans.append(Span(start, pos, {"kind": "long" if len(word) > 3 else "short",
                                           "initial": word[0].lower()}))
        examples.append(Example(f"ex{i}", text, tuple(spans),
                                {"domain": "code" if "def" in text else "prose"}))
    return ConceptDataset(name, tuple(examples))


@pytest.fixture()
def small_dataset() -> ConceptDataset:
    return word_dataset(CORPUS[:4] * 3)


def slow_writer_script(out, config: str, extra: str = "") -> str:
    """Python source for a child process that caches a random model into ``out`` slowly
    (0.3 s per batch, printing "batch" before each), for tests that interrupt a writer.
    ``config``: the CacheConfig arguments; ``extra``: lines run before caching."""
    import textwrap
    from pathlib import Path

    return textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import lensbias.store.writer as writer
        from conftest import make_lm, word_dataset, CORPUS
        from lensbias.models.tokenizer import BPETokenizer
        real_run = writer.adapter.run_hooks
        def slow_run(*args, **kwargs):
            print("batch", flush=True)
            time.sleep(0.3)
            return real_run(*args, **kwargs)
        writer.adapter.run_hooks = slow_run
        {extra}
        lm = make_lm(BPETokenizer.train(CORPUS, vocab_size=300))
        writer.cache_activations(lm, word_dataset(CORPUS * 3), {str(out)!r},
                                 writer.fmt.CacheConfig({config}))
    """)
