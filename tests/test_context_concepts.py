"""Concepts that need context (issue 12, item 4): the labelling rules on hand-made inputs, the
packaged data, and each new concept beating its token-id and embed floors on held-out
documents of a real model (MiniLM) on a fixed small slice."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lensbias.concepts.conllu import entity_mentions, read_sentences, sentence_example
from lensbias.concepts.python_code import python_examples
from lensbias.concepts.registry import load_dataset
from lensbias.concepts.schema import ConceptDataset, Example

PROSE_CONCEPTS = ("head_direction", "head_distance", "subj_obj")
GUM_CONCEPTS = ("entity_type", "infstat")
CODE_CONCEPTS = ("bracket_depth", "in_call_args", "name_seen_before")


def labelled(example: Example, label_set: str) -> list[tuple[str, str]]:
    return [(example.text[s.start:s.end], s.labels[label_set])
            for s in example.spans if label_set in s.labels]


# ---------------------------------------------------------------- prose rules

SENTENCE = """\
# newdoc id = d1
# sent_id = d1-1
# text = Mary gave the dog a bone yesterday, didn't she?
1\tMary\tMary\tPROPN\tNNP\t_\t2\tnsubj\t_\tEntity=(1-person-new-x-cf1-1-coref)
2\tgave\tgive\tVERB\tVBD\t_\t0\troot\t_\t_
3\tthe\tthe\tDET\tDT\t_\t4\tdet\t_\tEntity=(2-animal-acc:inf-x-cf2-1-sgl
4\tdog\tdog\tNOUN\tNN\t_\t2\tiobj\t_\tEntity=2)
5\ta\ta\tDET\tDT\t_\t6\tdet\t_\tEntity=(3-object-new-x-cf3-1-sgl
6\tbone\tbone\tNOUN\tNN\t_\t2\tobj\t_\tEntity=(5-substance-giv:act-x-cf5-1-sgl)3)
7\tyesterday\tyesterday\tNOUN\tNN\t_\t2\tobl:tmod\t_\tEntity=(4-time-new-x-cf4-1-sgl)|SpaceAfter=No
8\t,\t,\tPUNCT\t,\t_\t9\tpunct\t_\t_
9-10\tdidn't\t_\t_\t_\t_\t_\t_\t_\t_
9\tdid\tdo\tAUX\tVBD\t_\t2\tparataxis\t_\t_
10\tn't\tnot\tPART\tRB\t_\t9\tadvmod\t_\t_
11\tshe\tshe\tPRON\tPRP\t_\t9\tnsubj:pass\t_\tEntity=(1-person-giv:act-x-cf1-2-coref)|SpaceAfter=No
12\t?\t?\tPUNCT\t.\t_\t2\tpunct\t_\t_
"""


def sentence() -> Example:
    (parsed,) = read_sentences(io.StringIO(SENTENCE))
    return sentence_example(parsed, "gum", "dev", "GUM_fiction_x")


def test_head_direction_and_distance_follow_head_ids() -> None:
    example = sentence()
    assert labelled(example, "head_direction") == [
        ("Mary", "right"), ("gave", "root"), ("the", "right"), ("dog", "left"), ("a", "right"),
        ("bone", "left"), ("yesterday", "left"), (",", "right"), ("did", "left"),
        ("n't", "left"), ("she", "left"), ("?", "left")]
    # |head - id| in syntactic words: 1, 2, 3-5, 6+ (the MWT's words count one each)
    assert labelled(example, "head_distance") == [
        ("Mary", "1"), ("gave", "root"), ("the", "1"), ("dog", "2"), ("a", "1"),
        ("bone", "3-5"), ("yesterday", "3-5"), (",", "1"), ("did", "6+"), ("n't", "1"),
        ("she", "2"), ("?", "6+")]


def test_subj_obj_only_on_nominal_core_arguments() -> None:
    # nsubj:pass counts as subject, iobj as object; obl (yesterday) and non-nominals unlabelled
    assert labelled(sentence(), "subj_obj") == [
        ("Mary", "subject"), ("dog", "object"), ("bone", "object"), ("she", "subject")]


def test_entity_type_and_infstat_of_the_innermost_mention() -> None:
    example = sentence()
    assert labelled(example, "entity_type") == [
        ("Mary", "person"), ("the", "animal"), ("dog", "animal"), ("a", "object"),
        ("bone", "substance"), ("yesterday", "time"), ("she", "person")]
    # nested mentions: (3 spans "a bone", the one-word (5...) only "bone", which it wins
    assert labelled(example, "infstat") == [
        ("Mary", "new"), ("the", "acc"), ("dog", "acc"), ("a", "new"), ("bone", "giv"),
        ("yesterday", "new"), ("she", "giv")]
    (parsed,) = read_sentences(io.StringIO(SENTENCE))
    spans = sorted((m.first, m.last, m.etype) for m in entity_mentions(parsed))
    assert spans == [(1, 1, "person"), (3, 4, "animal"), (5, 6, "object"),
                     (6, 6, "substance"), (7, 7, "time"), (11, 11, "person")]


def test_no_entity_annotation_no_entity_labels() -> None:
    text = SENTENCE.replace("Entity=", "Other=")
    (parsed,) = read_sentences(io.StringIO(text))
    example = sentence_example(parsed, "ewt", "dev", "x")
    assert labelled(example, "entity_type") == [] and labelled(example, "infstat") == []
    assert len(labelled(example, "head_direction")) == 12


# ---------------------------------------------------------------- code rules

SNIPPET = ("import os.path as osp\n"
           "from a import b, c as d\n"
           "\n"
           "def f(x, key=None):\n"
           "    y = g(x, [1, (2, h(3))],\n"
           "          key=len(x))\n"
           "    try:\n"
           "        return {'k': y}[x]\n"
           "    except KeyError as err:\n"
           "        print(err, osp, os, (f)(y).m(z))\n")


def code() -> Example:
    (example,) = python_examples(SNIPPET, "t.py")
    return example


def test_bracket_depth_counts_open_brackets() -> None:
    depth = labelled(code(), "bracket_depth")
    ordered = [label for text, label in depth]
    texts = [text for text, label in depth]
    start = texts.index("g")
    assert list(zip(texts[start:start + 18], ordered[start:start + 18])) == [
        ("g", "0"), ("(", "0"), ("x", "1"), (",", "1"), ("[", "1"), ("1", "2"), (",", "2"),
        ("(", "2"), ("2", "3+"), (",", "3+"), ("h", "3+"), ("(", "3+"), ("3", "3+"),
        (")", "3+"), (")", "2"), ("]", "1"), (",", "1"), ("          ", "1")]
    assert dict(depth)["def"] == "0" and dict(depth)["'k'"] == "1"


def test_in_call_args_is_inside_the_argument_parentheses() -> None:
    (example,) = python_examples(
        "def f(x, k=1):\n    return g(x, [k], h(y)) + (f)(y) + {'a': [x]}[0]\n", "t.py")
    # tokens outside every bracket (def, g, the call's own parentheses, +) are unlabelled
    assert labelled(example, "in_call_args") == [
        ("x", "outside"), (",", "outside"), ("k", "outside"), ("=", "outside"),
        ("1", "outside"),  # a def's parameter list is not a call
        ("x", "inside"), (",", "inside"), ("[", "inside"), ("k", "inside"), ("]", "inside"),
        (",", "inside"), ("h", "inside"), ("(", "inside"), ("y", "inside"), (")", "inside"),
        ("f", "outside"), ("y", "inside"),  # (f)(y): the callee's parentheses group
        ("'a'", "outside"), (":", "outside"), ("[", "outside"), ("x", "outside"),
        ("]", "outside"), ("0", "outside")]  # a dict, a list and a subscript
    # the indent of a continuation line inside a call's arguments is inside
    assert ("          ", "inside") in labelled(code(), "in_call_args")


def test_name_seen_before_tracks_bindings_in_the_example() -> None:
    seen = labelled(code(), "name_seen_before")
    assert seen == [
        ("osp", "not_defined_earlier"), ("b", "not_defined_earlier"),
        ("d", "not_defined_earlier"),  # `a` and `c` are not bound names: unlabelled
        ("f", "not_defined_earlier"), ("x", "not_defined_earlier"),
        ("key", "not_defined_earlier"), ("y", "not_defined_earlier"),
        ("g", "not_defined_earlier"), ("x", "defined_earlier"), ("h", "not_defined_earlier"),
        ("len", "not_defined_earlier"), ("x", "defined_earlier"),  # the keyword `key=` is not
        ("y", "defined_earlier"), ("x", "defined_earlier"),
        ("KeyError", "not_defined_earlier"), ("err", "not_defined_earlier"),
        ("print", "not_defined_earlier"), ("err", "defined_earlier"),
        ("osp", "defined_earlier"), ("os", "not_defined_earlier"),  # only osp was bound
        ("f", "defined_earlier"), ("y", "defined_earlier"), ("z", "not_defined_earlier")]


def test_name_seen_before_restarts_in_each_chunk() -> None:
    source = "".join(f"def f{i}(a):\n    return a + {i}\n\n" for i in range(60))
    examples = python_examples(source, "big.py")
    assert len(examples) > 1
    for example in examples:  # every chunk begins afresh: its first `a` is new
        first_a = next(label for text, label in labelled(example, "name_seen_before")
                       if text == "a")
        assert first_a == "not_defined_earlier"


# ---------------------------------------------------------------- packaged data

def test_packaged_datasets_carry_the_new_label_sets() -> None:
    for name, concepts in (("ud-ewt", PROSE_CONCEPTS), ("ud-gum", PROSE_CONCEPTS + GUM_CONCEPTS),
                           ("python-stdlib", CODE_CONCEPTS)):
        dataset = load_dataset(name)
        assert set(concepts) <= set(dataset.label_sets), name
    ewt = load_dataset("ud-ewt")
    assert "entity_type" not in ewt.label_sets  # EWT has no entity annotation


def test_every_example_names_its_source_document() -> None:
    """Splits by source document need a document label on every example, and no document
    on both sides of a packaged split."""
    for name, key in (("ud-ewt", "doc"), ("ud-gum", "doc"), ("python-stdlib", "file"),
                      ("c-headers", "file")):
        examples = load_dataset(name).examples
        assert all(ex.seq_labels.get(key) for ex in examples), name
        if name.startswith("ud-"):
            by_split: dict[str, set[str]] = {}
            for ex in examples:
                by_split.setdefault(ex.seq_labels["split"], set()).add(ex.seq_labels[key])
            assert not by_split["dev"] & by_split["test"], name


# ---------------------------------------------------------------- gains over the floors

MODEL = "all-MiniLM-L6-v2"
PROBE_HOOK = "blocks.3.hook_resid_post"
MARGIN = 0.03
"""Measured gains over max(majority, token_id, embed) on these slices: head_direction
+0.061, head_distance +0.107, subj_obj +0.085, entity_type +0.114, bracket_depth +0.058,
in_call_args +0.092, name_seen_before +0.057 (infstat -0.042: not asserted)."""


def per_document_slice(name: str, per_doc: int, key: str) -> ConceptDataset:
    """The first ``per_doc`` examples of every document: a fixed slice with many documents."""
    dataset = load_dataset(name)
    taken: dict[str, int] = {}
    kept = []
    for example in dataset.examples:
        doc = example.seq_labels[key]
        if taken.get(doc, 0) < per_doc:
            taken[doc] = taken.get(doc, 0) + 1
            kept.append(example)
    return ConceptDataset(f"{name}-slice", tuple(kept), dataset.source)


def floors_and_probe(store, concept: str, doc_label: str) -> dict[str, float]:
    from lensbias.probes.fast import LinearProbe
    from lensbias.probes.floors import EMBED_HOOK, TokenIdLookup
    from lensbias.probes.linear import grouped_split

    labels, docs = store.labels(concept), store.labels(doc_label)
    ids = store.tokens()["ids"]
    test = grouped_split(docs, 0.3, seed=0)  # whole documents on each side
    train_rows = np.flatnonzero((labels >= 0) & ~test)
    values, counts = np.unique(labels[train_rows], return_counts=True)
    kept = values[counts >= 20]
    tr = train_rows[np.isin(labels[train_rows], kept)]
    te = np.flatnonzero((labels >= 0) & test & np.isin(labels, kept))
    scores = {"majority": float(np.mean(labels[te] == kept[np.argmax(counts[counts >= 20])])),
              "token_id": TokenIdLookup().fit(ids[tr], labels[tr]).score(ids[te], labels[te]),
              "n_test": len(te)}
    for name, hook in (("embed", EMBED_HOOK), ("probe", PROBE_HOOK)):
        X = store.activations(hook)
        probe = LinearProbe(C=1.0, max_iter=100).fit(X[tr], labels[tr])
        scores[name] = probe.score(X[te], labels[te])
    return scores


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from lensbias.models import load_model
    from lensbias.probes.floors import EMBED_HOOK
    from lensbias.store import ActivationStore, CacheConfig, cache_activations

    lm = load_model(MODEL)
    folder = tmp_path_factory.mktemp("context")
    slices = {"ud-ewt": (per_document_slice("ud-ewt", 1, "doc"), "doc"),
              "ud-gum": (per_document_slice("ud-gum", 5, "doc"), "doc"),
              "python-stdlib": (load_dataset("python-stdlib", max_examples=50), "file")}
    opened = {}
    for name, (data, doc_label) in slices.items():
        path = cache_activations(lm, data, folder / f"{name}.h5",
                                 CacheConfig(hooks=(EMBED_HOOK, PROBE_HOOK), dtype="float32"))
        opened[name] = (ActivationStore(path), doc_label)
    yield opened
    for store, _ in opened.values():
        store.close()


# infstat is left out: on MiniLM and tiny-mixed it sits at its floors (docs/concepts.md)
@pytest.mark.parametrize("dataset, concept", [("ud-ewt", c) for c in PROSE_CONCEPTS]
                         + [("ud-gum", "entity_type")]
                         + [("python-stdlib", c) for c in CODE_CONCEPTS])
def test_new_concept_beats_token_id_and_embed_floors(stores, dataset: str, concept: str) -> None:
    store, doc_label = stores[dataset]
    got = floors_and_probe(store, concept, doc_label)
    assert got["n_test"] >= 150, got
    floor = max(got["majority"], got["token_id"], got["embed"])
    assert got["probe"] >= floor + MARGIN, got
