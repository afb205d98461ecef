"""Concepts, stage 2: C source (system headers) labelled token by token with Pygments' CLexer.

Uses the same coarse ``token_kind`` labels as Python, plus ``preprocessor``; chunked alike.

Mapping of Pygments token types to ``token_kind``:

- keyword: ``Keyword`` and its subtypes except ``Keyword.Type`` (``struct``, ``typedef``,
  ``static``, ``const``, ``return``, ``inline`` ...).
- builtin: ``Keyword.Type`` and ``Name.Builtin``. Decision: C's built-in type names (``int``,
  ``char``, ``void``, ``unsigned``, ``_Bool`` ...) and the standard typedef names the lexer
  knows (``size_t``, ``int8_t``, ``wchar_t`` ...) are "builtin", because, like Python's
  builtins, they are names the language provides without a declaration in the file; the
  control words that shape statements stay "keyword".
- identifier: every other ``Name`` (functions, variables, macros used in code, labels).
- string: ``String`` (including char literals and prefixes such as ``L"..."``);
  number: ``Number``; operator: ``Operator`` and ``Punctuation``;
  comment: ``Comment`` except preprocessor types.
- preprocessor: ``Comment.Preproc`` and ``Comment.PreprocFile`` -- a directive line
  (``#include <x.h>``, ``#define MAX(a, b) ...``, ``#if ...``, continuation lines too) is labelled
  as a whole, because the lexer does not split macro bodies; comments inside it stay comment.
- indent: the leading whitespace of a line that starts outside any token.

Whitespace is never labelled (tokens are trimmed to their non-space characters); adjacent
pieces of one string, comment or directive (the lexer splits ``"a\\n"`` into several) are
merged into one span, and so are the pieces of one directive line; ``Error`` tokens get no span.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pygments.lexers import CLexer
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
)

from lensbias.concepts.python_code import (
    chunk_examples,
    line_starts,
    normalise_newlines,
    split_chunks,
)
from lensbias.concepts.schema import Example, Span

MERGED_KINDS = frozenset({"string", "comment", "preprocessor"})
"""Kinds whose touching pieces are one span."""


def token_kind(token_type: Any) -> str | None:
    """The coarse ``token_kind`` of a Pygments token type (None: not labelled)."""
    if token_type in Error:
        return None
    if token_type in Comment.Preproc or token_type in Comment.PreprocFile:
        return "preprocessor"
    if token_type in Comment:
        return "comment"
    if token_type in Keyword.Type or token_type in Name.Builtin:
        return "builtin"
    if token_type in Keyword:
        return "keyword"
    if token_type in Name:
        return "identifier"
    if token_type in String:
        return "string"
    if token_type in Number:
        return "number"
    if token_type in Operator or token_type in Punctuation:
        return "operator"
    return None


def _trimmed_pieces(source: str) -> Iterable[tuple[int, int, str]]:
    """(start, end, kind) of each labelled lexer token, trimmed of surrounding whitespace."""
    lexer = CLexer(stripnl=False, stripall=False, ensurenl=False)
    # get_tokens_unprocessed yields offsets into ``source`` itself (no newline/tab rewriting)
    for start, token_type, value in lexer.get_tokens_unprocessed(source):
        kind = token_kind(token_type)
        stripped = value.strip()
        if kind is None or not stripped:
            continue
        start += len(value) - len(value.lstrip())
        yield start, start + len(stripped), kind


def _merge(source: str, pieces: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Join touching pieces of one string/comment/directive; a directive also across spaces."""
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in pieces:
        if merged and kind in MERGED_KINDS and merged[-1][2] == kind:
            gap = source[merged[-1][1]:start]
            if gap == "" or (kind == "preprocessor" and not gap.strip(" \t")):
                merged[-1] = (merged[-1][0], end, kind)
                continue
        merged.append((start, end, kind))
    return merged


def label_c(source: str) -> tuple[tuple[Span, ...], dict[int, int]]:
    """File-level spans of C ``source`` (``\\n`` newlines) and its cut priorities by line.

    A cut before line n has priority 2 if it is at brace depth 0 after a blank line, 1 if at
    brace depth 0 and not inside a directive, else 0 (see ``split_chunks``).
    """
    pieces = _merge(source, _trimmed_pieces(source))
    starts = line_starts(source)
    spans: list[Span] = []
    position = 0
    line = 0  # 0-based index of the next line whose indent may be labelled
    for start, end, kind in pieces:
        while line < len(starts) - 1 and starts[line] <= start:
            spans.extend(_indent_span(source, starts[line], position))
            line += 1
        spans.append(Span(start, end, {"token_kind": kind}))
        position = end
    return tuple(spans), _cut_priorities(source, pieces, starts)


def _indent_span(source: str, line_start: int, covered_until: int) -> list[Span]:
    """The line's leading whitespace as an indent span, unless a token covers the line start."""
    if line_start < covered_until:
        return []
    end = line_start
    while end < len(source) and source[end] in " \t\f\v":
        end += 1
    if end == line_start or end >= len(source) or source[end] == "\n":
        return []
    return [Span(line_start, end, {"token_kind": "indent"})]


def _cut_priorities(source: str, pieces: list[tuple[int, int, str]],
                    starts: list[int]) -> dict[int, int]:
    depth_at = {}  # 1-based line -> brace depth at its start
    depth = 0
    line = 1
    for start, end, kind in pieces:
        while line < len(starts) and starts[line - 1] <= start:
            depth_at[line] = depth
            line += 1
        if kind == "operator":
            text = source[start:end]
            depth = max(0, depth + text.count("{") - text.count("}"))
    directive_lines = _continued_directive_lines(source, starts)
    priorities = {}
    for number, line_depth in depth_at.items():
        if line_depth > 0 or number in directive_lines:
            continue
        previous_blank = number > 1 and not source[starts[number - 2]:starts[number - 1]].strip()
        priorities[number] = 2 if previous_blank else 1
    return priorities


def _continued_directive_lines(source: str, starts: list[int]) -> set[int]:
    """1-based lines that continue a directive (the previous line ends with a backslash)."""
    continued = set()
    for number in range(2, len(starts)):
        previous = source[starts[number - 2]:starts[number - 1]].rstrip("\n")
        if previous.endswith("\\"):
            continued.add(number)
    return continued


def c_examples(source: str, file: str) -> list[Example]:
    """Label a C file and cut it into examples (seq labels domain/language/file)."""
    source = normalise_newlines(source)
    spans, priorities = label_c(source)
    return chunk_examples(split_chunks(source, spans, priorities), file, "c")
