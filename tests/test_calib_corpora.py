"""The named calibration corpora (calib-corpora.jsonl.gz, ``--calib corpus:NAME``): every
corpus is there, large enough and in its domain; none shares a document with the concept
data; windows drawn from one are seeded and corpus-specific; the names are checked early."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
import torch

from lensbias.compress import CalibConfig, Recipe
from lensbias.compress.calib import (CORPORA_FILE, calib_corpora, calib_domain,
                                     calibration_tokens, domain_texts)
from lensbias.concepts.jsonl import read_jsonl
from lensbias.concepts.registry import DATA_DIR, load_dataset
from lensbias.concepts.stdlib import is_held_out
from lensbias.errors import LensbiasError

PROSE = ("gum-academic", "gum-fiction", "gum-interview", "gum-news", "brown", "state-union",
         "movie-reviews", "masc")
CODE = ("stdlib-unittest", "stdlib-tkinter", "stdlib-asyncio", "stdlib-email",
        "site-transformers", "site-sympy", "c-glibc", "c-gcc")


@pytest.fixture(scope="module")
def corpora():
    """corpus name -> its examples, read straight from the packaged file."""
    out = defaultdict(list)
    for example in read_jsonl(DATA_DIR / CORPORA_FILE).examples:
        out[example.seq_labels["corpus"]].append(example)
    return out


@pytest.fixture(scope="module")
def tiny_mixed():
    from lensbias.models import load_model

    return load_model("tiny-mixed")


def test_every_corpus_is_there_large_enough_and_in_its_domain(corpora):
    expected = {**{n: "prose" for n in PROSE}, **{n: "code" for n in CODE}}
    assert calib_corpora() == expected
    assert sorted(corpora) == sorted(expected)
    for name, examples in corpora.items():
        assert sum(len(e.text) for e in examples) >= 40_000, name
        assert {e.seq_labels["domain"] for e in examples} == {expected[name]}, name
        assert all(len(e.text) <= 4_000 and e.text.strip() for e in examples), name
        assert domain_texts(f"corpus:{name}") == [e.text for e in examples]
    assert (DATA_DIR / CORPORA_FILE).stat().st_size < 1_500_000


def test_no_calibration_document_is_concept_data(corpora):
    stdlib_files = {e.seq_labels["file"] for e in load_dataset("python-stdlib").examples}
    for name in ("stdlib-unittest", "stdlib-tkinter", "stdlib-asyncio", "stdlib-email"):
        files = {e.seq_labels["file"] for e in corpora[name]}
        assert not files & stdlib_files, name
        assert not any(is_held_out(f) for f in files), name
        assert all(f.startswith(name.removeprefix("stdlib-") + "/") for f in files), name
    gum_docs = {e.seq_labels["doc"] for e in load_dataset("ud-gum").examples}
    for name in ("gum-academic", "gum-fiction", "gum-interview", "gum-news"):
        docs = {e.seq_labels["doc"] for e in corpora[name]}
        assert docs and not docs & gum_docs, name
        assert {e.seq_labels["split"] for e in corpora[name]} == {"train"}
        assert all(d.startswith(f"GUM_{name.removeprefix('gum-')}_") for d in docs), name
    header_files = {e.seq_labels["file"] for e in load_dataset("c-headers").examples}
    for name in ("c-glibc", "c-gcc"):
        files = {e.seq_labels["file"] for e in corpora[name]}
        assert files and not files & header_files, name
    gcc = {e.seq_labels["file"] for e in corpora["c-gcc"]}
    assert all("/gcc/" in f for f in gcc)
    for name in ("site-transformers", "site-sympy"):
        package = name.removeprefix("site-")
        assert all(e.seq_labels["file"].startswith(f"{package}/") for e in corpora[name])


def test_tagged_sources_lost_their_tags(corpora):
    """Brown's ``word/tag`` and MASC's ``word_TAG`` leave no tag behind (a real word with a
    slash, such as Brown's "and/or", is allowed)."""
    brown_tag = re.compile(r"\S/(?:at|nn|nns|np|jj|in|vb|vbd|vbn|vbz|cc|rb|cs|pps|dt|cd)"
                           r"(?:-tl|-hl)?\b")
    masc_tag = re.compile(r"_(?:NN|NNS|NNP|NNPS|DT|IN|JJ|VB|VBD|VBN|VBZ|VBP|PRP|CC|RB|CD|UH)\b")
    for name, pattern in (("brown", brown_tag), ("masc", masc_tag), ("movie-reviews", masc_tag)):
        text = "\n".join(e.text for e in corpora[name])
        assert not pattern.findall(text), (name, pattern.findall(text)[:5])
    brown = " ".join(e.text for e in corpora["brown"])
    assert "``" not in brown and "''" not in brown and " ," not in brown and " ." not in brown
    assert len(re.findall(r"\w/[a-z]{2,}\b", brown)) <= 3


def test_corpus_windows_are_seeded_and_corpus_specific(tiny_mixed):
    def draw(domain: str, seed: int = 0) -> torch.Tensor:
        return calibration_tokens(tiny_mixed, CalibConfig(domain, n_seqs=4, seq_len=32,
                                                          seed=seed))

    news = draw("corpus:gum-news")
    assert news.shape == (4, 32)
    assert torch.equal(news, draw("corpus:gum-news"))
    assert not torch.equal(news, draw("corpus:gum-news", seed=1))
    for other in ("corpus:gum-fiction", "corpus:brown", "prose", "corpus:stdlib-email"):
        assert not torch.equal(news, draw(other)), other


def test_calib_domain():
    assert calib_domain("code") == calib_domain("c") == "code"
    assert calib_domain("prose") == "prose"
    assert calib_domain("mixed") is None and calib_domain("my/file.jsonl") is None
    for name in PROSE:
        assert calib_domain(f"corpus:{name}") == "prose"
    for name in CODE:
        assert calib_domain(f"corpus:{name}") == "code"


def test_unknown_corpus_is_one_line_with_the_known_names(tiny_mixed):
    from lensbias.model_pair import check_recipe

    for call in (lambda: calibration_tokens(tiny_mixed, CalibConfig("corpus:gum-nws")),
                 lambda: calib_domain("corpus:gum-nws"),
                 lambda: check_recipe(Recipe("magnitude", {"sparsity": 0.5},
                                             calib=CalibConfig("corpus:gum-nws"))),
                 lambda: check_recipe(Recipe("wanda", {"sparsity": 0.5},
                                             calib=CalibConfig("corpus:gum-nws")))):
        with pytest.raises(LensbiasError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message
        assert "unknown calibration corpus 'gum-nws'" in message
        assert "did you mean corpus:gum-news" in message
        assert all(name in message for name in PROSE + CODE)
    # a method without calibration data takes a good corpus name (it is not a file)
    check_recipe(Recipe("magnitude", {"sparsity": 0.5}, calib=CalibConfig("corpus:gum-news")))


def test_sweep_config_takes_corpora_and_names_the_bad_field():
    from lensbias.sweep.config import sweep_config_from_dict

    base = {"models": ["tiny-mixed"], "methods": [{"name": "wanda", "levels": [0.5]}]}
    cfg = sweep_config_from_dict({**base, "calib": ["corpus:gum-news", "corpus:c-gcc", "code"]})
    assert cfg.calib == ("corpus:gum-news", "corpus:c-gcc", "code")
    with pytest.raises(LensbiasError, match=r"calib\[1\]: unknown calibration corpus 'brwn'"):
        sweep_config_from_dict({**base, "calib": ["code", "corpus:brwn"]})
    methods = [{"name": "wanda", "levels": [0.5], "calib": ["corpus:nope"]}]
    with pytest.raises(LensbiasError, match=r"methods\[0\] \(wanda\)\.calib\[0\]: unknown"):
        sweep_config_from_dict({**base, "methods": methods})


def test_compress_help_lists_every_corpus():
    from lensbias.cli.compress import compress

    (option,) = [p for p in compress.params if p.name == "calib"]
    assert "corpus:NAME" in option.help
    assert all(name in option.help for name in calib_corpora())
