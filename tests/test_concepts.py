"""Behaviour tests of the concept datasets: readers, labellers, alignment, JSONL, registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lensbias.concepts.align import align_labels, label_counts
from lensbias.concepts.c_code import c_examples
from lensbias.concepts.conllu import read_sentences, sentence_example
from lensbias.concepts.jsonl import read_jsonl, write_jsonl
from lensbias.concepts.python_code import python_examples
from lensbias.concepts.registry import list_datasets, load_dataset
from lensbias.concepts.schema import ConceptDataset, Example, Span
from lensbias.concepts.stdlib import is_held_out
from lensbias.errors import LensbiasError


def labelled(example: Example, label_set: str) -> list[tuple[str, str]]:
    """(surface text, label) of every span carrying ``label_set``."""
    return [(example.text[s.start:s.end], s.labels[label_set])
            for s in example.spans if label_set in s.labels]


def spans_at(example: Example, surface: str) -> list[Span]:
    return [s for s in example.spans if example.text[s.start:s.end] == surface]


# ---------------------------------------------------------------- UD (packaged data)

def test_ewt_sentence_hand_checked() -> None:
    dataset = load_dataset("ud-ewt:test")
    example = dataset.examples[0]
    assert example.text == "What if Google Morphed Into GoogleOS?"
    google = spans_at(example, "Google")[0].labels
    assert (google["upos"], google["deprel"], google["Number"]) == ("PROPN", "nsubj", "Sing")
    morphed = spans_at(example, "Morphed")[0].labels
    assert morphed["upos"] == "VERB" and morphed["Tense"] == "Past"
    assert morphed["deprel"] == "advcl"  # advcl:if has its subtype stripped
    assert spans_at(example, "?")[0].labels == {"upos": "PUNCT", "deprel": "punct",
                                                 "head_direction": "left",  # ? -> Morphed
                                                 "head_distance": "3-5"}
    assert (google["head_direction"], google["subj_obj"]) == ("right", "subject")
    assert example.seq_labels == {
        "domain": "prose", "corpus": "ewt", "genre": "weblog", "split": "test",
        "doc": "weblog-blogspot.com_zentelligence_20040423000200_ENG_20040423_000200"}


def test_ewt_multiword_token_is_split_by_word_forms() -> None:
    dataset = load_dataset("ud-ewt:dev")
    example = next(ex for ex in dataset.examples
                   if ex.text == "Yet we didn't charge them for the evacuation.")
    assert labelled(example, "upos")[2:4] == [("did", "AUX"), ("n't", "PART")]
    assert spans_at(example, "did")[0].labels["Tense"] == "Past"


def test_gum_has_genres_and_only_dev_test() -> None:
    dataset = load_dataset("ud-gum")
    assert {ex.seq_labels["split"] for ex in dataset.examples} == {"dev", "test"}
    genres = {ex.seq_labels["genre"] for ex in dataset.examples}
    assert {"academic", "fiction", "conversation", "whow"} <= genres
    for example in dataset.examples[:200]:  # spans lie inside the text, sorted, non-empty
        assert all(0 <= s.start < s.end <= len(example.text) for s in example.spans)
        assert [s.start for s in example.spans] == sorted(s.start for s in example.spans)


CONLLU = """\
# newdoc id = doc1
# meta::genre = fiction
# sent_id = doc1-1
# text = I can't go.
1\tI\tI\tPRON\tPRP\tCase=Nom|Number=Sing|Person=1\t4\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\tVerbForm=Fin\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tgo\tgo\tVERB\tVB\tVerbForm=Inf\t0\troot\t_\tSpaceAfter=No
4.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = doc1-2
# text = Gonna win
1-2\tGonna\t_\t_\t_\t_\t_\t_\t_\t_
1\tGon\tgo\tVERB\tVBG\tVerbForm=Ger\t0\troot\t_\t_
2\tto\tto\tPART\tTO\t_\t3\tmark\t_\t_
3\twin\twin\tVERB\tVB\tVerbForm=Inf\t1\txcomp:to\t_\t_
"""


def test_conllu_multiword_and_empty_nodes() -> None:
    first, second = [sentence_example(s, "gum", "dev", "GUM_fiction_x")
                     for s in read_sentences(io.StringIO(CONLLU))]
    assert labelled(first, "upos") == [("I", "PRON"), ("ca", "AUX"), ("n't", "PART"),
                                       ("go", "VERB"), (".", "PUNCT")]  # 4.1 has no span
    assert first.seq_labels["genre"] == "fiction" and first.seq_labels["doc"] == "doc1"
    # forms "Gon"+"to" do not spell "Gonna": the range takes its head's (word 1's) labels
    assert labelled(second, "upos") == [("Gonna", "VERB"), ("win", "VERB")]
    assert labelled(second, "deprel") == [("Gonna", "root"), ("win", "xcomp")]


# ---------------------------------------------------------------- Python

def test_python_line_hand_checked() -> None:
    source = "def f(x):\n    return len(x) + 1  # c\n"
    (example,) = python_examples(source, "t.py")
    assert example.text == source and example.seq_labels == {
        "domain": "code", "language": "python", "file": "t.py"}
    kinds = dict(labelled(example, "token_kind"))
    assert kinds["def"] == "keyword" and kinds["return"] == "keyword"
    assert kinds["len"] == "builtin" and kinds["1"] == "number"
    assert kinds["# c"] == "comment" and kinds["    "] == "indent" and kinds["+"] == "operator"
    roles = labelled(example, "identifier_role")
    assert roles == [("f", "function_name"), ("x", "parameter"), ("len", "call_target"),
                     ("x", "variable")]
    depth = {text: label for text, label in labelled(example, "nesting_depth")}
    assert depth["def"] == "0" and depth["return"] == "1" and depth["    "] == "1"


def test_python_roles_and_depths() -> None:
    source = ("import os.path as p\n"
              "class C(Base):\n"
              "    def m(self, key=open):\n"
              "        if self.ok:\n"
              "            return self.run(key=1)\n"
              "        elif key:\n"
              "            return 's'\n")
    (example,) = python_examples(source, "t.py")
    roles = dict(labelled(example, "identifier_role"))
    assert roles["os"] == roles["p"] == "import_name"
    assert roles["C"] == "class_name" and roles["Base"] == "variable"
    assert roles["ok"] == "attribute" and roles["run"] == "call_target"
    kinds = dict(labelled(example, "token_kind"))
    assert kinds["open"] == "builtin" and kinds["'s'"] == "string"
    depth = {example.text[s.start:s.end]: s.labels["nesting_depth"] for s in example.spans}
    assert (depth["class"], depth["def"], depth["if"], depth["elif"]) == ("0", "1", "2", "2")
    assert depth["run"] == "3+"


def test_python_chunks_respect_limits_and_offsets() -> None:
    source = "".join(f"def f{i}(a):\n    return a + {i}\n\n" for i in range(60))
    examples = python_examples(source, "big.py")
    assert len(examples) > 1
    assert "".join(ex.text for ex in examples) == source
    for example in examples:
        assert example.text.count("\n") <= 40 and len(example.text) <= 1500
        assert example.text.startswith("def ")  # cut before top-level statements
        for span in example.spans:
            assert 0 <= span.start < span.end <= len(example.text)


def test_python_unparsable_raises() -> None:
    with pytest.raises(LensbiasError):
        python_examples("def (:\n", "bad.py")


# ---------------------------------------------------------------- C

def test_c_snippet() -> None:
    source = ('#include <stdio.h>\n'
              'static int f(char *s) {\n'
              '    /* note */\n'
              '    return s[0] + 0x1F + \'c\'; // end\n'
              '}\n')
    (example,) = c_examples(source, "t.h")
    kinds = labelled(example, "token_kind")
    assert kinds[0] == ("#include <stdio.h>", "preprocessor")
    as_dict = dict(kinds)
    assert as_dict["static"] == "keyword" and as_dict["return"] == "keyword"
    assert as_dict["int"] == "builtin" and as_dict["char"] == "builtin"
    assert as_dict["f"] == "identifier" and as_dict["s"] == "identifier"
    assert as_dict["/* note */"] == "comment" and as_dict["// end"] == "comment"
    assert as_dict["0x1F"] == "number" and as_dict["'c'"] == "string"
    assert as_dict["{"] == "operator" and as_dict["    "] == "indent"
    assert example.seq_labels["language"] == "c"


# ---------------------------------------------------------------- alignment

SPANS = (Span(0, 5, {"upos": "NOUN"}), Span(6, 9, {"upos": "VERB"}),
         Span(9, 10, {"upos": "PUNCT", "other": "x"}))


def test_align_hand_made_offsets() -> None:
    # text "Dogs! run." -- spans [0,5) [6,9) [9,10)
    offsets = [(0, 2),   # inside the first span
               (2, 7),   # overlaps span 1 by 3 chars, span 2 by 1: the larger wins
               (5, 6),   # whitespace between spans: None
               (7, 7),   # zero width: None
               (8, 10),  # 1 char each of VERB and PUNCT: tie -> earlier span
               (10, 12)]  # past every span
    assert align_labels(SPANS, offsets, "upos") == ["NOUN", "NOUN", None, None, "VERB", None]
    assert align_labels(SPANS, offsets, "other") == [None, None, None, None, "x", None]
    assert align_labels(SPANS, offsets, "missing") == [None] * 6


def test_align_unsorted_tokens_and_spans() -> None:
    spans = (SPANS[2], SPANS[0], SPANS[1])
    assert align_labels(spans, [(9, 10), (0, 1), (6, 7)], "upos") == ["PUNCT", "NOUN", "VERB"]


@st.composite
def spans_and_offsets(draw):
    cuts = sorted(draw(st.lists(st.integers(0, 60), min_size=0, max_size=16, unique=True)))
    spans = [Span(a, b, {"k": f"v{i}"}) for i, (a, b) in enumerate(zip(cuts[::2], cuts[1::2]))]
    offsets = draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=20))
    return spans, [(start, start + width) for start, width in offsets]


@settings(max_examples=200, deadline=None)
@given(spans_and_offsets())
def test_align_property(data) -> None:
    spans, offsets = data
    labels = align_labels(spans, offsets, "k")
    assert len(labels) == len(offsets)
    for (start, end), label in zip(offsets, labels):
        overlapping = [s for s in spans if start < s.end and s.start < end]
        if label is not None:
            assert label in {s.labels["k"] for s in overlapping}
            best = max(min(s.end, end) - max(s.start, start) for s in overlapping)
            chosen = next(s for s in overlapping if s.labels["k"] == label)
            assert min(chosen.end, end) - max(chosen.start, start) == best
        else:
            assert not overlapping or start == end


# ---------------------------------------------------------------- JSONL

def sample_dataset() -> ConceptDataset:
    examples = (
        Example("a", "Dogs bark.", (Span(0, 4, {"upos": "NOUN"}), Span(4, 4, {})),
                {"domain": "prose"}),
        Example("b", "x = 1 # é\n", (Span(0, 1, {"token_kind": "identifier"}),)),
    )
    return ConceptDataset("sample", examples)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_round_trip(tmp_path, suffix) -> None:
    path = tmp_path / f"mine{suffix}"
    write_jsonl(sample_dataset(), path)
    loaded = read_jsonl(path)
    assert loaded.examples == sample_dataset().examples and loaded.name == "mine"
    assert load_dataset(str(path), max_examples=1).examples == sample_dataset().examples[:1]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    if suffix == ".jsonl.gz":
        assert gzip.open(path).read().decode().count("\n") == 2


def test_jsonl_defaults_and_blank_lines() -> None:
    lines = '\n{"text": "hi"}\n\n{"text": "yo", "id": "z", "labels": {"g": "x"}}\n'
    dataset = read_jsonl(io.StringIO(lines), "d")
    assert [ex.id for ex in dataset.examples] == ["2", "z"]
    assert dataset.examples[0].spans == () and dataset.examples[1].seq_labels == {"g": "x"}


GOOD = '{"text": "abc"}'
MALFORMED = [
    ("{bad json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"id": "x"}', 'no "text"'),
    ('{"text": 5}', '"text" is an integer'),
    ('{"text": "abc", "id": 3}', '"id" is an integer'),
    ('{"text": "abc", "spans": {}}', '"spans" is an object'),
    ('{"text": "abc", "spans": [{"start": 0, "end": 9}]}', "outside the text"),
    ('{"text": "abc", "spans": [{"start": -1, "end": 1}]}', "outside the text"),
    ('{"text": "abc", "spans": [{"start": 2, "end": 1}]}', "start 2 > end 1"),
    ('{"text": "abc", "spans": [{"start": "0", "end": 1}]}', "spans[0].start is a string"),
    ('{"text": "abc", "spans": [{"start": true, "end": 1}]}', "spans[0].start is a boolean"),
    ('{"text": "abc", "spans": [{"end": 1}]}', "spans[0].start is missing"),
    ('{"text": "abc", "spans": [{"start": 0, "end": 1, "labels": {"a": 1}}]}',
     "label values must be strings"),
    ('{"text": "abc", "spans": [{"start": 0, "end": 1, "labels": []}]}', "is a list"),
    ('{"text": "abc", "spans": [3]}', "spans[0] is an integer"),
    ('{"text": "abc", "labels": {"g": null}}', "is null"),
    ('{"text": "abc", "span": []}', "unknown key 'span'"),
    ('{"text": "abc", "spans": [{"start": 0, "end": 2, "labels": {"a": "x"}}, '
     '{"start": 1, "end": 3, "labels": {"a": "y"}}]}', "overlap"),
    ('{"text": "\\ud800"}', "unpaired surrogate"),
    ("[" * 100000, "nested too deeply"),
    ('{"text": "abc", "id": "1"}', "already used on line 1"),
]


@pytest.mark.parametrize("bad, message", MALFORMED)
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad, message) -> None:
    path = tmp_path / "user.jsonl"
    path.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(LensbiasError) as caught:
        read_jsonl(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text


def test_jsonl_bad_files(tmp_path) -> None:
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xe9"}\n')
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip")
    cases = [(tmp_path / "latin.jsonl", ":2: not valid UTF-8"),
             (tmp_path / "fake.jsonl.gz", "cannot read"),
             (tmp_path / "missing.jsonl", "file not found")]
    for path, message in cases:
        with pytest.raises(LensbiasError, match=message):
            read_jsonl(path)


def test_jsonl_accepts_binary_stream_with_json_records() -> None:
    record = {"text": "a b", "spans": [{"start": 2, "end": 3, "labels": {"k": "v"}}]}
    dataset = read_jsonl(io.BytesIO(json.dumps(record).encode()), "s")
    assert dataset.examples[0].spans == (Span(2, 3, {"k": "v"}),)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["text", "id", "spans", "labels", "start", "end", "x"]), inner,
        max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=80), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_jsonl_never_raises_another_error_type(content: bytes) -> None:
    try:
        read_jsonl(io.BytesIO(content), "fuzz")
    except LensbiasError as error:
        assert "\n" not in str(error)


# ---------------------------------------------------------------- registry

def test_registry_names_and_errors() -> None:
    names = [name for name, _ in list_datasets()]
    assert names == ["ud-ewt", "ud-gum", "python-stdlib", "c-headers"]
    with pytest.raises(LensbiasError, match="ud-ewt, ud-gum, python-stdlib, c-headers"):
        load_dataset("ud-ewtt")
    with pytest.raises(LensbiasError, match="ud-gum:dev, ud-gum:test"):
        load_dataset("ud-gum:train")
    with pytest.raises(LensbiasError, match="has no splits"):
        load_dataset("python-stdlib:dev")
    with pytest.raises(LensbiasError, match="positive integer"):
        load_dataset("ud-ewt", max_examples=0)


def test_registry_split_selection_and_max_examples() -> None:
    dev, test, both = (load_dataset(spec) for spec in ("ud-gum:dev", "ud-gum:test", "ud-gum"))
    assert {ex.seq_labels["split"] for ex in dev.examples} == {"dev"}
    assert len(dev.examples) + len(test.examples) == len(both.examples)
    assert dev.name == "ud-gum:dev" and "CC BY-NC-SA" in dev.source
    first = load_dataset("ud-gum:test", max_examples=5)
    assert first.examples == test.examples[:5]


def test_code_datasets_are_held_out_and_labelled() -> None:
    python = load_dataset("python-stdlib")
    assert len(python.examples) >= 250
    assert all(is_held_out(ex.seq_labels["file"]) for ex in python.examples)
    assert is_held_out("string.py") == (int(hashlib.sha256(b"string.py").hexdigest(), 16) % 10 == 0)
    assert len({ex.seq_labels["file"] for ex in python.examples}) >= 100
    assert python.label_sets == ("bracket_depth", "identifier_role", "in_call_args",
                                 "name_seen_before", "nesting_depth", "token_kind")
    c_headers = load_dataset("c-headers")
    assert label_counts(c_headers, "token_kind")["preprocessor"] > 0
    assert {ex.seq_labels["domain"] for ex in c_headers.examples} == {"code"}


def test_calibration_corpora_are_training_side() -> None:
    from lensbias.concepts.registry import DATA_DIR

    code = read_jsonl(DATA_DIR / "calib-code.jsonl.gz")
    prose = read_jsonl(DATA_DIR / "calib-prose.jsonl.gz")
    assert not any(is_held_out(ex.seq_labels["file"]) for ex in code.examples)
    assert {ex.seq_labels["split"] for ex in prose.examples} == {"train"}
    assert sum(len(ex.text) for ex in code.examples) > 250_000
    assert sum(len(ex.text) for ex in prose.examples) > 250_000


def test_real_tokenizers_get_the_right_labels() -> None:
    """Hand-checked: tiny-mixed's BPE and MiniLM's WordPiece on one labelled sentence and one
    Python line, through the built-in datasets' own labellers."""
    from lensbias.models import load_model

    sentence = next(e for e in load_dataset("ud-ewt").examples
                    if e.text == "From the AP comes this story :")
    (code,) = python_examples("def area(r):\n    return 3.14 * r ** 2\n", "x.py")
    for name in ("tiny-mixed", "all-MiniLM-L6-v2"):
        tok = load_model(name).tokenizer
        for example, label_set, expect in (
                (sentence, "upos", {"From": "ADP", "AP": "PROPN", "comes": "VERB",
                                    "story": "NOUN", ":": "PUNCT"}),
                (code, "token_kind", {"def": "keyword", "area": "identifier", "3.14": "number",
                                      "**": "operator"})):
            enc = tok.encode(example.text)
            labels = align_labels(example.spans, enc.offsets, label_set)
            for word, want in expect.items():
                start = example.text.index(word)
                hits = [lab for (a, b), lab, s in zip(enc.offsets, labels, enc.special)
                        if not s and a < start + len(word) and start < b]
                assert hits and all(h == want for h in hits), (name, word, hits)
            assert all(lab is None for lab, s in zip(labels, enc.special) if s)


def test_jsonl_line_longer_than_the_cap_is_refused_with_its_line(tmp_path) -> None:
    from lensbias.concepts.jsonl import MAX_TEXT_CHARS

    path = tmp_path / "long.jsonl"
    ok = json.dumps({"text": "a" * MAX_TEXT_CHARS})
    path.write_text(json.dumps({"text": "short"}) + "\n" + ok + "\n")
    assert len(read_jsonl(path).examples[1].text) == MAX_TEXT_CHARS
    path.write_text(json.dumps({"text": "short"}) + "\n"
                    + json.dumps({"text": "a" * (MAX_TEXT_CHARS + 1)}) + "\n")
    with pytest.raises(LensbiasError, match=r"long\.jsonl:2: \"text\" is 200,001 characters; "
                                            r"an example may hold at most 200,000"):
        read_jsonl(path)
