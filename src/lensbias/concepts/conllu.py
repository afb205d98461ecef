"""Concepts, stage 2: CoNLL-U treebanks (UD English EWT, GUM) read into labelled examples.

One sentence becomes one Example whose text is the sentence's ``# text =`` line.

Character spans. The reader walks the ``# text`` line with the *surface tokens* of the
sentence (plain words, plus multiword-token lines such as ``3-4 didn't``); each surface form
must start exactly where the previous one's ``SpaceAfter`` puts it: right after it when the
previous token has ``SpaceAfter=No``, after at least one whitespace character otherwise (any
whitespace before the first). Text after the last word may only be whitespace. Any mismatch
(a word not where the text has it, a missing or extra space, text that no word spells) raises
a LensbiasError naming the sentence; nothing is skipped silently. Empty nodes (ids like ``8.1``) have no surface form
and get no span.

Multiword tokens (MWT). The surface range ``didn't`` belongs to the MWT line; its syntactic
words are ``did`` and ``n't``. Rule: if the word forms, concatenated, spell the surface form
exactly (``did`` + ``n't`` = ``didn't``; ``Zurbarán`` + ``’s``), the range is split and each
word labels exactly the characters that spell it -- every character then belongs to the one
word it spells. Otherwise (forms were normalised, e.g. ``gonna`` -> ``going to``) the whole
range carries the labels of the MWT's syntactic head: the first of its words whose HEAD lies
outside the MWT (the first word if none does). The rule is in ``_mwt_spans``.

Token label sets (only where the treebank gives a value): ``upos``; ``deprel`` with the
subtype dropped (``nmod:poss`` -> ``nmod``); and the features ``Tense``, ``Number``,
``VerbForm``, ``Person``, ``Mood``. Concepts that need context (``word_labels``):

- ``head_direction``: where the word's syntactic head (HEAD) is: ``left`` (head id < word
  id), ``right`` (head id > word id) or ``root`` (HEAD 0);
- ``head_distance``: ``|HEAD - id|`` bucketed ``1``, ``2``, ``3-5``, ``6+``, or ``root``;
- ``subj_obj`` (NOUN, PRON, PROPN words only): ``subject`` when the deprel is a subject
  (``nsubj``, ``csubj`` and their subtypes such as ``nsubj:pass``), ``object`` when it is
  ``obj`` or ``iobj``; every other nominal (obl, nmod, conj, compound, root, expl ...) is
  left unlabelled, so the concept is the subject-vs-object contrast itself;
- ``entity_type`` and ``infstat`` (GUM only: its ``Entity`` MISC annotation): the entity
  type (person, place, abstract, ...) and the coarse information status (``new``, ``giv``,
  ``acc``: the part of ``giv:act``, ``acc:inf`` ... before the colon) of the innermost
  entity mention that covers the word (``entity_mentions``); words outside every mention
  are unlabelled.

Sequence labels: ``domain`` ("prose"), ``corpus`` ("ewt" / "gum"), ``genre`` (GUM: the
``# meta::genre`` comment, else the file name ``GUM_<genre>_<name>``; EWT: the sent_id
prefix ``weblog-``, ``newsgroup-``, ``email-``, ``reviews-``, ``answers-``), ``split`` and
``doc`` (the ``# newdoc id``, else the sent_id minus its trailing ``-NNNN``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lensbias.concepts.schema import Example, Span
from lensbias.errors import LensbiasError

FEATURES: tuple[str, ...] = ("Tense", "Number", "VerbForm", "Person", "Mood")
"""Morphological features kept as token label sets."""

EWT_GENRES: tuple[str, ...] = ("answers", "email", "newsgroup", "reviews", "weblog")


@dataclass(frozen=True)
class Word:
    """One syntactic word of a CoNLL-U sentence (an integer-id line)."""

    index: int
    form: str
    upos: str
    feats: str
    head: str
    deprel: str
    misc: str


@dataclass(frozen=True)
class MultiwordToken:
    """A surface token ``first-last`` that spells several syntactic words."""

    first: int
    last: int
    form: str
    misc: str = ""


@dataclass(frozen=True)
class Sentence:
    """A parsed sentence: its comments, words and multiword tokens."""

    comments: dict[str, str]
    words: tuple[Word, ...]
    multiword: tuple[MultiwordToken, ...]
    new_paragraph: bool = False
    doc_comments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Mention:
    """An entity mention of GUM's ``Entity`` annotation: words ``first``..``last`` (ids)."""

    first: int
    last: int
    etype: str
    infstat: str
    """Coarse information status: ``new``, ``giv``, ``acc`` (or "" if absent)."""


def read_sentences(lines: Iterable[str]) -> Iterator[Sentence]:
    """Parse CoNLL-U lines into sentences; document-level comments are carried forward."""
    doc_comments: dict[str, str] = {}
    comments: dict[str, str] = {}
    rows: list[list[str]] = []
    new_paragraph = False
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            if rows:
                yield _make_sentence(comments, rows, new_paragraph, doc_comments)
            comments, rows, new_paragraph = {}, [], False
        elif line.startswith("#"):
            key, value = _parse_comment(line)
            if key == "newdoc id":
                doc_comments = {}
            if key in ("newpar", "newpar id"):
                new_paragraph = True
            if key == "newdoc id" or key.startswith("meta::"):
                doc_comments[key] = value
            comments[key] = value
        else:
            rows.append(line.split("\t"))
    if rows:
        yield _make_sentence(comments, rows, new_paragraph, doc_comments)


def _parse_comment(line: str) -> tuple[str, str]:
    body = line[1:].strip()
    key, _, value = body.partition("=")
    return key.strip(), value.strip()


def _make_sentence(
    comments: dict[str, str], rows: list[list[str]], new_paragraph: bool, doc: dict[str, str]
) -> Sentence:
    words: list[Word] = []
    multiword: list[MultiwordToken] = []
    for cols in rows:
        if len(cols) != 10:
            raise LensbiasError(f"CoNLL-U line has {len(cols)} columns, expected 10: {cols[:2]}")
        ident = cols[0]
        if "-" in ident:
            first, last = ident.split("-", 1)
            multiword.append(MultiwordToken(int(first), int(last), cols[1], cols[9]))
        elif "." not in ident:  # empty nodes (8.1) have no surface form
            words.append(Word(int(ident), cols[1], cols[3], cols[5], cols[6], cols[7], cols[9]))
    return Sentence(dict(comments), tuple(words), tuple(multiword), new_paragraph, dict(doc))


def word_labels(word: Word, mention: Mention | None = None) -> dict[str, str]:
    """The token label sets of one word (``upos``, coarse ``deprel``, kept features, the
    head and argument concepts; ``entity_type``/``infstat`` of ``mention``, the innermost
    entity mention covering the word, if any)."""
    labels: dict[str, str] = {}
    if word.upos not in ("", "_"):
        labels["upos"] = word.upos
    if word.deprel not in ("", "_"):
        labels["deprel"] = word.deprel.split(":", 1)[0]
    if word.feats not in ("", "_"):
        for pair in word.feats.split("|"):
            name, _, value = pair.partition("=")
            if name in FEATURES and value:
                labels[name] = value
    labels.update(head_labels(word))
    role = subj_obj(word)
    if role:
        labels["subj_obj"] = role
    if mention is not None:
        labels["entity_type"] = mention.etype
        if mention.infstat:
            labels["infstat"] = mention.infstat
    return labels


def head_labels(word: Word) -> dict[str, str]:
    """``head_direction`` and ``head_distance`` of a word (empty if HEAD is not an integer)."""
    if not word.head.isdigit():
        return {}
    head = int(word.head)
    if head == 0:
        return {"head_direction": "root", "head_distance": "root"}
    distance = abs(head - word.index)
    bucket = ("1" if distance == 1 else "2" if distance == 2 else
              "3-5" if distance <= 5 else "6+")
    return {"head_direction": "left" if head < word.index else "right",
            "head_distance": bucket}


SUBJECT_RELATIONS = ("nsubj", "csubj")
OBJECT_RELATIONS = ("obj", "iobj")
NOMINAL_UPOS = ("NOUN", "PRON", "PROPN")


def subj_obj(word: Word) -> str | None:
    """``subject``/``object`` for a NOUN/PRON/PROPN core argument, else None."""
    if word.upos not in NOMINAL_UPOS:
        return None
    relation = word.deprel.split(":", 1)[0]
    if relation in SUBJECT_RELATIONS:
        return "subject"
    if relation in OBJECT_RELATIONS:
        return "object"
    return None


def entity_mentions(sentence: Sentence) -> list[Mention]:
    """The entity mentions of a sentence, from the ``Entity=`` MISC values (CorefUD brackets:
    ``(3-person-new-...`` opens mention 3, ``3)`` closes it, ``(5-object-giv:act-...)`` is a
    one-word mention; attributes ``id-etype-infstat-...`` per ``# global.Entity``). A mention
    still open at the sentence's end is closed at its last word."""
    mentions: list[Mention] = []
    open_mentions: list[tuple[str, int, str, str]] = []  # (id, first word, etype, infstat)
    last_index = 0
    for word in sentence.words:
        last_index = word.index
        value = next((item[len("Entity="):] for item in word.misc.split("|")
                      if item.startswith("Entity=")), "")
        at = 0
        while at < len(value):
            if value[at] == "(":
                stop = min([i for i in (value.find("(", at + 1), value.find(")", at + 1))
                            if i >= 0] or [len(value)])
                parts = value[at + 1:stop].split("-")
                etype = parts[1] if len(parts) > 1 else ""
                infstat = parts[2].split(":", 1)[0] if len(parts) > 2 else ""
                if stop < len(value) and value[stop] == ")":  # one-word mention
                    mentions.append(Mention(word.index, word.index, etype, infstat))
                    stop += 1
                else:
                    open_mentions.append((parts[0], word.index, etype, infstat))
                at = stop
            else:
                stop = value.find(")", at)
                if stop < 0:
                    break
                ident = value[at:stop]
                for position in range(len(open_mentions) - 1, -1, -1):
                    if open_mentions[position][0] == ident:
                        _, first, etype, infstat = open_mentions.pop(position)
                        mentions.append(Mention(first, word.index, etype, infstat))
                        break
                at = stop + 1
    for _, first, etype, infstat in open_mentions:
        mentions.append(Mention(first, last_index, etype, infstat))
    return [mention for mention in mentions if mention.etype]


def innermost_mentions(sentence: Sentence) -> dict[int, Mention]:
    """Word id -> the innermost mention covering it: the latest-starting one, then the
    shortest, then the one listed first."""
    chosen: dict[int, Mention] = {}
    for mention in entity_mentions(sentence):
        for index in range(mention.first, mention.last + 1):
            best = chosen.get(index)
            if best is None or (mention.first, best.last) > (best.first, mention.last):
                chosen[index] = mention
    return chosen


def sentence_spans(sentence: Sentence, text: str) -> tuple[Span, ...]:
    """Character spans of the sentence's words in ``text`` (see the module docstring)."""
    by_index = {word.index: word for word in sentence.words}
    mentions = innermost_mentions(sentence)
    mwt_by_first = {mwt.first: mwt for mwt in sentence.multiword}
    spans: list[Span] = []
    cursor = 0
    space = None  # before the first word: any whitespace; then as SpaceAfter says
    index = 1
    last_index = max(by_index, default=0)
    while index <= last_index:
        mwt = mwt_by_first.get(index)
        if mwt is None and index not in by_index:
            index += 1
            continue
        form = mwt.form if mwt else by_index[index].form
        start = _locate(text, form, cursor, sentence, space)
        cursor = start + len(form)
        space = "SpaceAfter=No" not in (mwt.misc if mwt else by_index[index].misc).split("|")
        if mwt:
            words = [by_index[i] for i in range(mwt.first, mwt.last + 1) if i in by_index]
            spans.extend(_mwt_spans(mwt, words, start, mentions))
            index = mwt.last + 1
        else:
            spans.append(Span(start, cursor, word_labels(by_index[index], mentions.get(index))))
            index += 1
    if text[cursor:].strip():
        raise _mismatch(sentence, f"its '# text' goes on after the last word: "
                                  f"{text[cursor:cursor + 20]!r} (character {cursor})")
    return tuple(spans)


def _locate(text: str, form: str, cursor: int, sentence: Sentence, space: bool | None) -> int:
    """Where ``form`` starts: at ``cursor`` after whitespace (``space`` True: at least one
    character of it; False: none; None: any). Anything else raises LensbiasError."""
    start = cursor
    while start < len(text) and text[start].isspace():
        start += 1
    if not text.startswith(form, start):
        raise _mismatch(sentence, f"word {form!r} is not at character {start} of its "
                                  f"'# text' (found {text[start:start + len(form) + 10]!r})")
    if space is True and start == cursor:
        raise _mismatch(sentence, f"word {form!r} follows the previous word without a space "
                                  f"at character {start}, but the previous word lacks "
                                  "SpaceAfter=No")
    if space is False and start > cursor:
        raise _mismatch(sentence, f"word {form!r} follows a space at character {cursor}, but "
                                  "the previous word has SpaceAfter=No")
    return start


def _mismatch(sentence: Sentence, what: str) -> LensbiasError:
    sent_id = sentence.comments.get("sent_id", "?")
    return LensbiasError(f"sentence {sent_id}: {what}; fix the treebank's text line, word "
                         "forms or SpaceAfter")


def _mwt_spans(mwt: MultiwordToken, words: list[Word], start: int,
               mentions: dict[int, Mention]) -> list[Span]:
    """Split the MWT range by word forms when they spell it; else label it by its head."""
    if words and "".join(word.form for word in words) == mwt.form:
        spans = []
        for word in words:
            if word.form:
                spans.append(Span(start, start + len(word.form),
                                  word_labels(word, mentions.get(word.index))))
            start += len(word.form)
        return spans
    inside = {str(i) for i in range(mwt.first, mwt.last + 1)}
    heads = [word for word in words if word.head not in inside]
    chosen = heads[0] if heads else (words[0] if words else None)
    labels = word_labels(chosen, mentions.get(chosen.index)) if chosen else {}
    return [Span(start, start + len(mwt.form), labels)]


def sentence_seq_labels(sentence: Sentence, corpus: str, split: str, genre: str) -> dict[str, str]:
    """The sequence-level labels of one sentence."""
    sent_id = sentence.comments.get("sent_id", "")
    doc = sentence.doc_comments.get("newdoc id") or sent_id.rsplit("-", 1)[0]
    labels = {"domain": "prose", "corpus": corpus, "genre": genre, "split": split, "doc": doc}
    return {key: value for key, value in labels.items() if value}


def ewt_genre(sent_id: str) -> str:
    """The EWT genre from a sent_id such as ``weblog-blogspot.com_...-0001``."""
    prefix = sent_id.split("-", 1)[0]
    return prefix if prefix in EWT_GENRES else ""


def gum_genre(sentence: Sentence, file_stem: str) -> str:
    """The GUM genre from ``# meta::genre``, else from the file name ``GUM_<genre>_...``."""
    genre = sentence.doc_comments.get("meta::genre", "")
    if genre:
        return genre
    parts = file_stem.split("_")
    return parts[1] if len(parts) > 2 and parts[0] == "GUM" else ""


def read_conllu(path: str | Path, corpus: str, split: str) -> list[Example]:
    """Read one CoNLL-U file of ``corpus`` ("ewt" or "gum") into examples, in file order."""
    path = Path(path)
    examples = []
    with path.open(encoding="utf-8") as handle:
        for sentence in read_sentences(handle):
            examples.append(sentence_example(sentence, corpus, split, path.stem))
    return examples


def sentence_example(sentence: Sentence, corpus: str, split: str, file_stem: str) -> Example:
    """One sentence as an Example (id = sent_id)."""
    sent_id = sentence.comments.get("sent_id", "")
    text = sentence.comments.get("text")
    if text is None:
        raise LensbiasError(f"sentence {sent_id or '?'} in {file_stem} has no '# text =' line")
    genre = ewt_genre(sent_id) if corpus == "ewt" else gum_genre(sentence, file_stem)
    seq = sentence_seq_labels(sentence, corpus, split, genre)
    return Example(sent_id, text, sentence_spans(sentence, text), seq)


def read_paragraphs(path: str | Path) -> list[str]:
    """The document's paragraphs (``# newpar`` boundaries), sentences joined by a space."""
    paragraphs: list[list[str]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for sentence in read_sentences(handle):
            text = sentence.comments.get("text", "")
            if sentence.new_paragraph or not paragraphs:
                paragraphs.append([])
            if text:
                paragraphs[-1].append(text)
    return [" ".join(sentences) for sentences in paragraphs if sentences]
