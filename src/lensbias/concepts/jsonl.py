"""Concepts, stage 4: the JSONL file format for concept datasets (user files and packaged data).

Reading validates every line and reports any problem as one LensbiasError line.

Format: UTF-8 text, optionally gzipped (name ending ``.gz``), one JSON object per line; blank
lines are skipped::

    {"id": "s1", "text": "Dogs bark.", "spans": [{"start": 0, "end": 4,
     "labels": {"upos": "NOUN"}}], "labels": {"domain": "prose"}}

- ``text`` (string, required): what the model reads; at most ``MAX_TEXT_CHARS`` (200,000)
  characters, so one line cannot hold the whole run's memory and time (a 1 MB line took
  85 s and ~1 GB to cache on 2 cores): split a long document into several lines.
- ``id`` (string, optional): unique within the file; defaults to the line number ("7").
- ``spans`` (list, optional): labelled character ranges ``text[start:end]``; ``start`` and
  ``end`` are integers with ``0 <= start <= end <= len(text)`` counted in Unicode code points
  (Python ``str`` indices); ``labels`` maps label-set name -> label value, both strings.
  Spans that carry the same label set must not overlap.
- ``labels`` (object, optional): sequence-level labels, string -> string.

No other keys are allowed (a typo such as ``"span"`` would otherwise drop data silently).

Every cached token carries a ``domain``: a user file may declare it per line
(``"labels": {"domain": "code"}``); lines that do not get ``with_domain``'s value when the
CLI loads the file (``--domain``, default ``"user"``).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lensbias.concepts.schema import ConceptDataset, Example, Span
from lensbias.errors import LensbiasError

EXAMPLE_KEYS = ("id", "text", "spans", "labels")
MAX_TEXT_CHARS = 200_000
"""The longest ``text`` one line may hold (the built-in examples hold at most 1,500)."""
SPAN_KEYS = ("start", "end", "labels")
DOMAIN = "domain"
USER_DOMAIN = "user"
"""The ``domain`` of user examples that declare none (``lensbias diff/cache --domain``)."""


class _LineError(Exception):
    """A problem on one line; read_jsonl adds the file and line number."""


def read_jsonl(
    source: str | os.PathLike[str] | IO[str] | IO[bytes], name: str | None = None
) -> ConceptDataset:
    """Read and validate a concept dataset; any problem raises LensbiasError (file:line: what)."""
    label = _source_label(source)
    examples: list[Example] = []
    first_line_of_id: dict[str, int] = {}
    for number, line in _numbered_lines(source, label):
        if not line.strip():
            continue
        try:
            example = parse_example(line, number)
        except _LineError as problem:
            raise LensbiasError(f"{label}:{number}: {problem}") from None
        if example.id in first_line_of_id:
            raise LensbiasError(
                f"{label}:{number}: id {_short(example.id)} already used on line "
                f"{first_line_of_id[example.id]}; give each line a unique \"id\""
            )
        first_line_of_id[example.id] = number
        examples.append(example)
    return ConceptDataset(name or _default_name(label), tuple(examples), f"user file {label}")


def with_domain(dataset: ConceptDataset, domain: str = USER_DOMAIN) -> ConceptDataset:
    """``dataset`` with ``domain`` as the ``domain`` label of every example that has none;
    a domain an example declares is kept."""
    if not isinstance(domain, str) or not domain.strip() or not domain.isprintable():
        raise LensbiasError(f"domain must be a non-empty name such as 'code', 'prose' or "
                            f"'user', got {domain!r:.40}")
    if all(DOMAIN in ex.seq_labels for ex in dataset.examples):
        return dataset
    examples = tuple(ex if DOMAIN in ex.seq_labels
                     else dataclasses.replace(ex, seq_labels={**ex.seq_labels, DOMAIN: domain})
                     for ex in dataset.examples)
    return dataclasses.replace(dataset, examples=examples)


def _source_label(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def _default_name(label: str) -> str:
    base = os.path.basename(label)
    for suffix in (".gz", ".jsonl"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base or "user-dataset"


def _numbered_lines(source: Any, label: str) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs; I/O, gzip and UTF-8 problems become LensbiasError."""
    try:
        content = _read_all(source)
    except FileNotFoundError:
        raise LensbiasError(f"{label}: file not found; check the path") from None
    except (OSError, EOFError, zlib.error, ValueError) as problem:
        raise LensbiasError(f"{label}: cannot read ({problem}); is it a valid (gzipped) "
                            "JSONL file?") from None
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8")
        except UnicodeDecodeError as problem:
            line = content[: problem.start].count(b"\n") + 1
            raise LensbiasError(f"{label}:{line}: not valid UTF-8; save the file as UTF-8") \
                from None
    if content.startswith("\ufeff"):
        content = content[1:]
    # split on \n only: str.splitlines would also break on \x1c, \u2028 ... inside strings
    for number, line in enumerate(content.split("\n"), start=1):
        yield number, line.rstrip("\r")


def _read_all(source: Any) -> str | bytes:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        with open(path, "rb") as handle:
            return handle.read()
    read = getattr(source, "read", None)
    if not callable(read):
        raise OSError(f"expected a path or an open file, got {type(source).__name__}")
    content = read()
    if isinstance(content, bytes) and content[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=io.BytesIO(content)).read()
    if not isinstance(content, (str, bytes)):
        raise OSError(f"read() returned {type(content).__name__}, expected str or bytes")
    return content


def parse_example(line: str, number: int) -> Example:
    """Parse and validate one JSONL line; problems raise _LineError (message without place)."""
    try:
        record = json.loads(line)
    except RecursionError:
        raise _LineError("JSON nested too deeply; use the flat format of the docs") from None
    except ValueError as problem:  # JSONDecodeError, or an integer too long to convert
        raise _LineError(f"invalid JSON ({_first_line(problem)})") from None
    if not isinstance(record, dict):
        raise _LineError(f"expected a JSON object, found {_json_type(record)}")
    unknown = sorted(set(record) - set(EXAMPLE_KEYS))
    if unknown:
        raise _LineError(f"unknown key {_short(unknown[0])}; allowed keys: "
                         + ", ".join(EXAMPLE_KEYS))
    text = record.get("text")
    if not isinstance(text, str):
        found = "no \"text\"" if "text" not in record else f"\"text\" is {_json_type(text)}"
        raise _LineError(f"{found}; every line needs \"text\": a string")
    if len(text) > MAX_TEXT_CHARS:
        raise _LineError(f"\"text\" is {len(text):,} characters; an example may hold at most "
                         f"{MAX_TEXT_CHARS:,}: split the document into several lines (each is "
                         "windowed anyway)")
    _require_encodable(text, "\"text\"")
    example_id = record.get("id", str(number))
    if not isinstance(example_id, str):
        raise _LineError(f"\"id\" is {_json_type(example_id)}; use a string or leave it out")
    _require_encodable(example_id, "\"id\"")
    spans = _parse_spans(record.get("spans", []), len(text))
    seq_labels = _parse_labels(record.get("labels", {}), "\"labels\"")
    return Example(example_id, text, spans, seq_labels)


def _parse_spans(raw: Any, text_length: int) -> tuple[Span, ...]:
    if not isinstance(raw, list):
        raise _LineError(f"\"spans\" is {_json_type(raw)}; use a list of span objects")
    spans = [_parse_span(item, index, text_length) for index, item in enumerate(raw)]
    order = sorted(range(len(spans)), key=lambda index: (spans[index].start, index))
    _check_no_overlap(spans, order)
    return tuple(spans[index] for index in order)


def _parse_span(item: Any, index: int, text_length: int) -> Span:
    where = f"spans[{index}]"
    if not isinstance(item, dict):
        raise _LineError(f"{where} is {_json_type(item)}; use {{\"start\", \"end\", \"labels\"}}")
    unknown = sorted(set(item) - set(SPAN_KEYS))
    if unknown:
        raise _LineError(f"{where} has unknown key {_short(unknown[0])}; allowed keys: "
                         + ", ".join(SPAN_KEYS))
    for key in ("start", "end"):
        value = item.get(key)
        if type(value) is not int:  # bool is an int subclass: reject it too
            found = "missing" if key not in item else _json_type(value)
            raise _LineError(f"{where}.{key} is {found}; use an integer character offset")
    start, end = item["start"], item["end"]
    if start > end:
        raise _LineError(f"{where} has start {start} > end {end}; swap or fix the offsets")
    if start < 0 or end > text_length:
        raise _LineError(f"{where} [{start}, {end}) is outside the text (length "
                         f"{text_length}); offsets count characters of \"text\"")
    labels = _parse_labels(item.get("labels", {}), f"{where}.labels")
    return Span(start, end, labels)


def _parse_labels(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _LineError(f"{where} is {_json_type(raw)}; use an object of string -> string")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _LineError(f"{where}[{_short(key)}] is {_json_type(value)}; label values "
                             "must be strings (write numbers as \"3\")")
        _require_encodable(key, f"{where} key")
        _require_encodable(value, f"{where}[{_short(key)}]")
    return dict(raw)


def _check_no_overlap(spans: list[Span], order: list[int]) -> None:
    last_by_set: dict[str, int] = {}  # label set -> index of the span that ends last so far
    for index in order:
        span = spans[index]
        for label_set in span.labels:
            previous = last_by_set.get(label_set)
            if previous is not None and spans[previous].end > span.start:
                raise _LineError(
                    f"spans[{previous}] and spans[{index}] overlap and both carry label set "
                    f"{_short(label_set)}; spans of one label set must not overlap")
            if previous is None or span.end > spans[previous].end:
                last_by_set[label_set] = index


def _require_encodable(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _LineError(f"{where} contains an unpaired surrogate escape (\\ud800-\\udfff); "
                         "remove it") from None


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(problem: Exception) -> str:
    return str(problem).splitlines()[0] if str(problem) else type(problem).__name__


def example_record(example: Example) -> dict[str, Any]:
    """The JSON object of one example (keys in the documented order)."""
    record: dict[str, Any] = {"id": example.id, "text": example.text}
    record["spans"] = [
        {"start": span.start, "end": span.end, "labels": span.labels} for span in example.spans
    ]
    if example.seq_labels:
        record["labels"] = example.seq_labels
    return record


def write_jsonl(dataset: ConceptDataset, path: str | os.PathLike[str]) -> None:
    """Write ``dataset`` to ``path`` atomically (temp file + os.replace); ``.gz`` gzips it.

    Gzip output is reproducible: no file name and mtime 0 in the header.
    """
    target = Path(path)
    lines = (json.dumps(example_record(ex), ensure_ascii=False, separators=(",", ":")) + "\n"
             for ex in dataset.examples)
    temp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(handle, "wb") as raw:
            if target.name.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
                    zipped.write("".join(lines).encode("utf-8"))
            else:
                raw.write("".join(lines).encode("utf-8"))
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
        temp_name = None
    except UnicodeEncodeError:
        raise LensbiasError(f"{target}: cannot write: a text or label holds an unpaired "
                            "surrogate (\\ud800-\\udfff); remove it") from None
    except OSError as problem:
        raise LensbiasError(f"{target}: cannot write ({problem}); check the folder exists "
                            "and is writable") from None
    finally:
        if temp_name is not None and os.path.exists(temp_name):
            os.unlink(temp_name)
