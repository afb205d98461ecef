"""Concepts, stage 2: Python source labelled token by token (tokenize + ast), cut into chunks.

Also holds the line chunker that the C labeller shares.

Label sets (one span per token; all spans of a file are disjoint):

- ``token_kind``: keyword (``keyword.iskeyword``; soft keywords such as ``match`` count as
  identifiers), builtin (a name of the ``builtins`` module used as a bare reference or call
  -- not when it is an attribute, a definition, a parameter, a keyword argument or an import),
  identifier (every other name), string (f-strings whole), number, operator (OP tokens),
  comment, indent (the leading whitespace of a line whose first token starts after column 0;
  INDENT/DEDENT tokens have no width, so the whitespace itself is labelled).
- ``identifier_role`` on name tokens that are not keywords: function_name and class_name
  (the name after ``def``/``class``), parameter, keyword_argument (``f(key=...)``),
  import_name (every name in an import statement), attribute (``obj.name``), call_target (the
  name that is called: ``f`` in ``f(x)``, ``m`` in ``obj.m(x)``), variable (any other ``Name``
  node), other (names the AST gives no position, e.g. ``except E as name``, ``global name``).
- ``nesting_depth`` on every span: "0", "1", "2" or "3+", the number of enclosing compound
  statement blocks (def/class/if/for/while/with/try/match, async forms too) of the line the
  token starts on; ``elif``/``else``/``except``/``finally`` headers sit at their statement's
  depth, and a body written on its header's line (``if x: y``) takes the header's depth.

Concepts that need context (a token's text does not decide them):

- ``bracket_depth`` on every span: "0", "1", "2" or "3+", the number of ``(``, ``[``, ``{``
  opened and not yet closed before the token in the file; an opening bracket takes the depth
  outside it and its closing bracket the same depth, so a pair shares one label.
- ``in_call_args`` on spans inside at least one bracket (``bracket_depth`` > 0; tokens
  outside every bracket are trivially outside and unlabelled): "inside" when the token lies
  strictly between the parentheses of a call's argument list (``x``, ``,``, ``[`` and ``y``
  in ``f(x, [y])``: nested brackets and inner calls count), else "outside" (a ``def``'s
  parameter list, a class's bases, a subscript, a list, dict or tuple outside any call).
- ``name_seen_before`` on the tokens of Python names: "defined_earlier" when the same
  identifier is bound earlier in the same example (the chunk the model reads: a binding in
  another chunk of the file is invisible to it), else "not_defined_earlier". A name is any
  ``ast.Name`` (load, store or del), a parameter, the name after ``def``/``class``, the name
  an import binds (``os`` in ``import os.path``, ``c`` in ``from a import b as c``), the
  name after ``except ... as`` and a ``match`` capture. Bindings are the same minus loads
  and dels; scope is ignored and textual order decides (the ``x`` left of ``=`` in ``x = x
  + 1`` is its first binding, the right-hand ``x`` comes after it). Attributes, keyword
  argument names, module paths of imports and ``global``/``nonlocal`` names are unlabelled.

Chunks: whole lines, at most ``MAX_LINES`` lines and ``MAX_CHARS`` characters, cut preferably
before a top-level statement, else before any statement, else at any line break that no token
spans; offsets are relative to the chunk.
"""

from __future__ import annotations

import ast
from bisect import bisect_left, bisect_right
import builtins
import io
import keyword
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from lensbias.concepts.schema import Example, Span
from lensbias.errors import LensbiasError

MAX_LINES = 40
MAX_CHARS = 1500
BUILTIN_NAMES = frozenset(dir(builtins))
NOT_BUILTIN_ROLES = frozenset({"attribute", "function_name", "class_name", "parameter",
                               "keyword_argument", "import_name"})
STRING_TOKENS = frozenset(
    getattr(tokenize, name) for name in ("STRING", "FSTRING_START", "FSTRING_MIDDLE",
                                         "FSTRING_END") if hasattr(tokenize, name))
SKIPPED_TOKENS = frozenset({tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER, tokenize.ERRORTOKEN, tokenize.ENCODING})
BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
OPENING = frozenset("([{")
CLOSING = frozenset(")]}")


@dataclass(frozen=True)
class Chunk:
    """A run of whole lines of a file, with its spans shifted to chunk-relative offsets."""

    first_line: int
    """1-based number of the chunk's first line in the file."""
    text: str
    spans: tuple[Span, ...]


def depth_bucket(depth: int) -> str:
    """Nesting depth as a label: "0", "1", "2" or "3+"."""
    return str(depth) if depth < 3 else "3+"


def line_starts(text: str) -> list[int]:
    """Character offset of the start of each line (index 0 = line 1), plus len(text)."""
    starts = [0]
    for index, char in enumerate(text):
        if char == "\n":
            starts.append(index + 1)
    if starts[-1] != len(text):
        starts.append(len(text))
    return starts



def normalise_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` become ``\\n`` (chunk texts always use ``\\n``)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_lines(text: str) -> list[str]:
    """Lines with their ``\\n``, split on ``\\n`` only (unlike str.splitlines)."""
    starts = line_starts(text)
    return [text[starts[index]:starts[index + 1]] for index in range(len(starts) - 1)]


def label_python(source: str) -> tuple[tuple[Span, ...], dict[int, int]]:
    """File-level spans of ``source`` (``\\n`` newlines) and its statement-boundary priorities.

    The priorities map a 1-based line number to 2 (a top-level statement starts there) or 1
    (another statement starts there). Raises LensbiasError if the source does not parse.
    """
    spans, priorities, _ = _label(source, *_parse(source))
    return spans, priorities


def _parse(source: str) -> tuple[ast.Module, list[tokenize.TokenInfo]]:
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source, newline="\n").readline))
    except (SyntaxError, tokenize.TokenError, ValueError, RecursionError,
            MemoryError) as problem:
        raise LensbiasError(f"cannot parse Python source ({type(problem).__name__}: "
                            f"{str(problem).splitlines()[0] if str(problem) else ''})") from None
    return tree, tokens


def _label(source: str, tree: ast.Module, tokens: list[tokenize.TokenInfo]
           ) -> tuple[tuple[Span, ...], dict[int, int], dict[int, tuple[str, bool]]]:
    """File-level spans, statement-boundary priorities and the name table of
    ``_name_table`` (offset of a name token -> (identifier, is a binding))."""
    lines = split_lines(source)
    starts = line_starts(source)
    roles = _Roles.from_tree(tree, lines)
    depths = _line_depths(tree, lines)
    in_call = _call_argument_mask(tree, tokens, starts, lines, len(source))
    spans = _token_spans(tokens, starts, roles, depths, lines, in_call)
    return tuple(spans), _statement_boundaries(tree), _name_table(tree, tokens, starts, lines)


def _offset(starts: list[int], lines: list[str], lineno: int, byte_col: int) -> int:
    """Character offset in the file of an AST (line, UTF-8 byte column) position."""
    return starts[lineno - 1] + _char_col(lines, lineno, byte_col)


def _token_offsets(tokens: list[tokenize.TokenInfo], starts: list[int]) -> list[int]:
    return [starts[token.start[0] - 1] + token.start[1] for token in tokens]


def _call_argument_mask(tree: ast.Module, tokens: list[tokenize.TokenInfo], starts: list[int],
                        lines: list[str], size: int) -> list[bool]:
    """Per character of the file: does it lie strictly inside a call's argument parentheses?

    The opening parenthesis is the first token after the callee that is not a ``)`` closing
    a parenthesised callee (``(f)(x)``); calls whose parentheses are not real tokens (calls
    inside an f-string, which tokenize keeps as one string token) are skipped.
    """
    offsets = _token_offsets(tokens, starts)
    closers = {offset for token, offset in zip(tokens, offsets)
               if token.type == tokenize.OP and token.string == ")"}
    boundary = [0] * (size + 1)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or node.end_lineno is None \
                or node.func.end_lineno is None:
            continue
        func_end = _offset(starts, lines, node.func.end_lineno, node.func.end_col_offset or 0)
        close = _offset(starts, lines, node.end_lineno, node.end_col_offset or 0) - 1
        at = bisect_left(offsets, func_end)
        while at < len(tokens) and (tokens[at].string == ")" or tokens[at].type in
                                    (tokenize.NL, tokenize.COMMENT)):
            at += 1
        if at == len(tokens) or tokens[at].string != "(" or not offsets[at] < close < size \
                or close not in closers:
            continue
        boundary[offsets[at] + 1] += 1
        boundary[close] -= 1
    return [running > 0 for running in accumulate(boundary[:size])]


def _name_table(tree: ast.Module, tokens: list[tokenize.TokenInfo], starts: list[int],
                lines: list[str]) -> dict[int, tuple[str, bool]]:
    """Offset of each Python-name token -> (identifier, True if it binds the name)."""
    offsets = _token_offsets(tokens, starts)
    names: dict[int, tuple[str, bool]] = {}

    def name_tokens(node: ast.AST) -> list[int]:
        """Indices of the NAME tokens inside ``node``'s source range."""
        first = bisect_left(offsets, _offset(starts, lines, node.lineno, node.col_offset))
        end = _offset(starts, lines, node.end_lineno or node.lineno, node.end_col_offset or 0)
        found = []
        for index in range(first, len(tokens)):
            if offsets[index] >= end:
                break
            if tokens[index].type == tokenize.NAME:
                found.append(index)
        return found

    def bind(index: int, name: str) -> None:
        if tokens[index].string == name:
            names[offsets[index]] = (name, True)

    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            offset = _offset(starts, lines, node.lineno, node.col_offset)
            names[offset] = (node.id, isinstance(node.ctx, ast.Store))
        elif isinstance(node, ast.arg):
            names[_offset(starts, lines, node.lineno, node.col_offset)] = (node.arg, True)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                inside = name_tokens(alias) if hasattr(alias, "lineno") else []
                if not inside or alias.name == "*":
                    continue
                if alias.asname:
                    bind(inside[-1], alias.asname)
                else:
                    bind(inside[0], alias.name.split(".", 1)[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            inside = name_tokens(node)
            for previous, index in zip(inside, inside[1:]):
                if tokens[previous].string == "as":
                    bind(index, node.name)
                    break
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            inside = name_tokens(node)
            if inside:
                bind(inside[-1], node.name)
    for previous, token, offset in zip(tokens, tokens[1:], offsets[1:]):
        if token.type == tokenize.NAME and previous.type == tokenize.NAME \
                and previous.string in ("def", "class"):
            names[offset] = (token.string, True)
    return names


def mark_names_seen(chunk: Chunk, begin: int, names: dict[int, tuple[str, bool]]) -> Chunk:
    """``chunk`` with ``name_seen_before`` on its name tokens (``begin``: the chunk's first
    character in the file; ``names``: the file's ``_name_table``)."""
    bound: set[str] = set()
    spans = []
    for span in chunk.spans:
        entry = names.get(begin + span.start)
        if entry is not None and chunk.text[span.start:span.end] == entry[0] \
                and span.labels.get("token_kind") in ("identifier", "builtin"):
            name, binds = entry
            seen = "defined_earlier" if name in bound else "not_defined_earlier"
            span = Span(span.start, span.end, {**span.labels, "name_seen_before": seen})
            if binds:
                bound.add(name)
        spans.append(span)
    return Chunk(chunk.first_line, chunk.text, tuple(spans))


def _char_col(lines: list[str], lineno: int, byte_col: int) -> int:
    """AST columns count UTF-8 bytes; tokenize columns count characters."""
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    if line.isascii():
        return byte_col
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _first_line(node: ast.AST) -> int:
    """A statement's first line, decorators included."""
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [item.lineno for item in decorators])


@dataclass(frozen=True)
class _Roles:
    """Identifier roles of name tokens, found from the AST."""

    by_position: dict[tuple[int, int], str]
    """(line, char column) of a name token -> role."""
    import_ranges: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    """(start, end) positions of import statements."""

    @classmethod
    def from_tree(cls, tree: ast.AST, lines: list[str]) -> _Roles:
        found: dict[tuple[int, int], str] = {}
        imports = []
        for node in ast.walk(tree):
            for position, role in _node_roles(node, lines):
                if role in ("call_target", "parameter", "keyword_argument"):
                    found[position] = role
                else:
                    found.setdefault(position, role)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.end_lineno:
                end = (node.end_lineno, _char_col(lines, node.end_lineno, node.end_col_offset or 0))
                imports.append(((node.lineno, _char_col(lines, node.lineno, node.col_offset)), end))
        return cls(found, tuple(imports))

    def role(self, token: tokenize.TokenInfo, previous: tokenize.TokenInfo | None) -> str:
        """The identifier_role of a (non-keyword) name token."""
        if previous is not None and previous.type == tokenize.NAME:
            if previous.string == "def":
                return "function_name"
            if previous.string == "class":
                return "class_name"
        if any(start <= token.start < end for start, end in self.import_ranges):
            return "import_name"
        return self.by_position.get(token.start, "other")


def _node_roles(node: ast.AST, lines: list[str]) -> list[tuple[tuple[int, int], str]]:
    """Roles that one AST node assigns to name-token positions."""
    def at(lineno: int, byte_col: int) -> tuple[int, int]:
        return (lineno, _char_col(lines, lineno, byte_col))

    def attribute_position(attribute: ast.Attribute) -> tuple[int, int]:
        end_col = (attribute.end_col_offset or 0) - len(attribute.attr.encode("utf-8"))
        return at(attribute.end_lineno or attribute.lineno, end_col)

    if isinstance(node, ast.Name):
        return [(at(node.lineno, node.col_offset), "variable")]
    if isinstance(node, ast.Attribute):
        return [(attribute_position(node), "attribute")]
    if isinstance(node, ast.arg):
        return [(at(node.lineno, node.col_offset), "parameter")]
    if isinstance(node, ast.keyword) and node.arg is not None:
        return [(at(node.lineno, node.col_offset), "keyword_argument")]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return [(at(node.func.lineno, node.func.col_offset), "call_target")]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return [(attribute_position(node.func), "call_target")]
    return []


def _line_depths(tree: ast.Module, lines: list[str]) -> list[int]:
    """Nesting depth of each line (index 0 = line 1); see the module docstring."""
    depths = [0] * (len(lines) + 2)

    def visit_block(statements: Sequence[ast.AST], depth: int, header_line: int) -> None:
        first = max(_first_line(statements[0]), header_line + 1)  # `if x: y` keeps x's depth
        last = statements[-1].end_lineno or statements[-1].lineno
        if last >= first:
            depths[first - 1:last] = [depth] * (last - first + 1)
        for statement in statements:
            visit_statement(statement, depth)

    def visit_statement(node: ast.AST, depth: int) -> None:
        for field_name in BLOCK_FIELDS:
            block = getattr(node, field_name, None)
            if not isinstance(block, list) or not block or not hasattr(block[0], "lineno"):
                continue
            if field_name == "orelse" and _is_elif(block, lines):
                visit_statement(block[0], depth)  # elif continues the if, it is not nested
            elif field_name in ("handlers", "cases"):
                for clause in block:  # the except/case header stays at depth
                    if clause.body:
                        visit_block(clause.body, depth + 1, clause.lineno)
            else:
                visit_block(block, depth + 1, _header_line(node, field_name, block, lines))

    if tree.body:
        visit_block(tree.body, 0, 0)
    return depths


def _header_line(node: ast.AST, field_name: str, block: list[ast.AST], lines: list[str]) -> int:
    """The line of the header that opens ``block`` (``def``/``if``/``else:``/``finally:``)."""
    if field_name == "body":
        return node.lineno
    first = _first_line(block[0])
    same_line = lines[first - 1].lstrip().startswith(("else", "finally"))
    return first if same_line else first - 1  # `else: y` on one line, else the line above


def _is_elif(block: list[ast.AST], lines: list[str]) -> bool:
    node = block[0]
    if len(block) != 1 or not isinstance(node, ast.If) or node.lineno > len(lines):
        return False
    column = _char_col(lines, node.lineno, node.col_offset)
    return lines[node.lineno - 1][column:column + 4] == "elif"


def _statement_boundaries(tree: ast.Module) -> dict[int, int]:
    """Line number -> 2 if a top-level statement starts there, 1 if any other statement."""
    priority = {_first_line(node): 1 for node in ast.walk(tree) if isinstance(node, ast.stmt)}
    priority.update({_first_line(node): 2 for node in tree.body})
    return priority


def _token_spans(
    tokens: list[tokenize.TokenInfo],
    starts: list[int],
    roles: _Roles,
    depths: list[int],
    lines: list[str],
    in_call: list[bool],
) -> list[Span]:
    spans: list[Span] = []
    indented_lines: set[int] = set()
    previous = None
    brackets = 0
    for token in tokens:
        if token.type in SKIPPED_TOKENS:
            continue
        (row, column), (end_row, end_column) = token.start, token.end
        depth = depth_bucket(depths[row - 1])
        start = starts[row - 1] + column
        if row not in indented_lines:
            indented_lines.add(row)
            if column > 0 and not lines[row - 1][:column].strip():
                labels = {"token_kind": "indent", "nesting_depth": depth,
                          "bracket_depth": depth_bucket(brackets)}
                if brackets:
                    labels["in_call_args"] = _inside(in_call, starts[row - 1])
                spans.append(Span(starts[row - 1], start, labels))
        if token.type == tokenize.OP and token.string in CLOSING:
            brackets = max(0, brackets - 1)
        labels = {"token_kind": _token_kind(token), "nesting_depth": depth}
        if labels["token_kind"] == "identifier":
            role = roles.role(token, previous)
            labels["identifier_role"] = role
            if token.string in BUILTIN_NAMES and role not in NOT_BUILTIN_ROLES:
                labels["token_kind"] = "builtin"
        labels["bracket_depth"] = depth_bucket(brackets)
        if brackets:  # outside every bracket a token is trivially outside: unlabelled
            labels["in_call_args"] = _inside(in_call, start)
        if token.type == tokenize.OP and token.string in OPENING:
            brackets += 1
        spans.append(Span(start, starts[end_row - 1] + end_column, labels))
        previous = token
    return spans


def _inside(in_call: list[bool], offset: int) -> str:
    return "inside" if offset < len(in_call) and in_call[offset] else "outside"


def _token_kind(token: tokenize.TokenInfo) -> str:
    """Coarse kind from the token type alone (builtins are refined by the caller)."""
    if token.type in STRING_TOKENS:
        return "string"
    if token.type == tokenize.NUMBER:
        return "number"
    if token.type == tokenize.COMMENT:
        return "comment"
    if token.type == tokenize.NAME:
        return "keyword" if keyword.iskeyword(token.string) else "identifier"
    return "operator"


def split_chunks(
    text: str,
    spans: Sequence[Span],
    priorities: dict[int, int],
    max_lines: int = MAX_LINES,
    max_chars: int = MAX_CHARS,
) -> list[Chunk]:
    """Cut ``text`` into chunks of whole lines (shared by the Python and C labellers).

    A cut before line ``n`` has priority ``priorities.get(n, 0)``, or -1 if a span crosses
    it. Each chunk is as long as the limits allow, ending at the best cut available; a cut
    of higher priority is preferred only when it leaves at least ``max_lines // 4`` lines.
    Spans crossing a forced cut are dropped; whitespace-only chunks are left out.
    """
    starts = line_starts(text)
    line_count = len(starts) - 1
    crossed = _crossed_lines(spans, starts)
    span_starts = [span.start for span in spans]  # spans are sorted by start
    chunks = []
    first = 1
    while first <= line_count:
        limit = first  # last line that fits
        while (limit < line_count and limit + 1 - first < max_lines
               and starts[limit + 1] - starts[first - 1] <= max_chars):
            limit += 1
        cut = line_count + 1 if limit == line_count else _best_cut(
            first, limit, priorities, crossed, max(1, max_lines // 4))
        chunk = _make_chunk(text, spans, span_starts, starts[first - 1], starts[cut - 1], first)
        if chunk.text.strip():
            chunks.append(chunk)
        first = cut
    return chunks


def _crossed_lines(spans: Sequence[Span], starts: list[int]) -> set[int]:
    """Line numbers (1-based) whose first character lies strictly inside some span."""
    crossed: set[int] = set()
    for span in spans:
        line = bisect_right(starts, span.start) + 1  # the line after the span's first line
        while line < len(starts) and starts[line - 1] < span.end:
            crossed.add(line)
            line += 1
    return crossed


def _best_cut(first: int, limit: int, priorities: dict[int, int], crossed: set[int],
              min_lines: int) -> int:
    """The next chunk's first line: a cut in (first, limit + 1] by the rule of split_chunks."""
    candidates = [(-1 if cut in crossed else priorities.get(cut, 0), cut)
                  for cut in range(first + 1, limit + 2)]
    long_enough = [item for item in candidates if item[1] - first >= min_lines]
    return max(long_enough or candidates)[1]


def _make_chunk(text: str, spans: Sequence[Span], span_starts: list[int], begin: int,
                end: int, first_line: int) -> Chunk:
    low, high = bisect_left(span_starts, begin), bisect_left(span_starts, end)
    inside = tuple(Span(span.start - begin, span.end - begin, span.labels)
                   for span in spans[low:high] if span.end <= end)
    return Chunk(first_line, text[begin:end], inside)


def chunk_examples(chunks: Sequence[Chunk], file: str, language: str) -> list[Example]:
    """Examples (id ``file:first_line``) of a file's chunks."""
    seq = {"domain": "code", "language": language, "file": file}
    return [Example(f"{file}:{chunk.first_line}", chunk.text, chunk.spans, dict(seq))
            for chunk in chunks]


def python_examples(source: str, file: str) -> list[Example]:
    """Label a Python file and cut it into examples; LensbiasError if it does not parse."""
    source = normalise_newlines(source)
    spans, priorities, names = _label(source, *_parse(source))
    starts = line_starts(source)
    chunks = [mark_names_seen(chunk, starts[chunk.first_line - 1], names)
              for chunk in split_chunks(source, spans, priorities)]
    return chunk_examples(chunks, file, "python")
