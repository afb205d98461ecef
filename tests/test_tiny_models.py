"""The built-in tiny models: present, small, and shaped by their training mix."""

from __future__ import annotations

import json

import pytest

from lensbias.compress.measure import HELD_OUT
from lensbias.concepts.registry import load_dataset
from lensbias.models import load_model
from lensbias.models.tiny import TINY_NAMES, WEIGHTS_DIR
from lensbias.models.train import bits_per_byte


def _bpb(name: str, domain: str) -> float:
    lm = load_model(name)
    spec, _ = HELD_OUT[domain]
    texts = [e.text for e in load_dataset(spec, max_examples=120 if domain == "prose" else 12).examples]
    if domain == "prose":
        texts = ["\n".join(texts[i:i + 20]) for i in range(0, len(texts), 20)]
    return bits_per_byte(lm.model, texts, lambda t: lm.tokenizer.encode(t).ids[1:],
                         lm.tokenizer.bos_id, 256)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_folder_is_complete_and_small(name):
    folder = WEIGHTS_DIR / name
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 30 * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert config["transformer_lens_config"]["n_layers"] == 4
    assert config["transformer_lens_config"]["d_model"] == 256
    card = (folder / "MODEL_CARD.md").read_text()
    assert "bits per byte" in card.lower() and "GUM" in card


def test_training_mix_shows_in_held_out_bits_per_byte():
    code = {n: _bpb(n, "code") for n in ("tiny-code", "tiny-prose")}
    prose = {n: _bpb(n, "prose") for n in ("tiny-code", "tiny-prose")}
    assert code["tiny-code"] < code["tiny-prose"] - 0.05, code
    assert prose["tiny-prose"] < prose["tiny-code"] - 0.05, prose


def test_models_share_one_tokenizer():
    text = "def f(x):\n    return x  # The cat sat."
    ids = {n: tuple(load_model(n).tokenizer.encode(text).ids) for n in TINY_NAMES}
    assert len(set(ids.values())) == 1
