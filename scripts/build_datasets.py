"""Build the packaged concept datasets and calibration corpora in src/lensbias/concepts/data/.

Run once by a maintainer (needs the UD treebanks under --data); the package never reads them.

    python scripts/build_datasets.py [--data /work/shared/data] [--out src/lensbias/concepts/data]
    python scripts/build_datasets.py --only calib-corpora   # one file (and LICENSES.md)

Writes (deterministic: fixed order and choices, gzip mtime 0):
  ud-ewt.jsonl.gz        EWT dev + test, every sentence
  ud-gum.jsonl.gz        GUM dev + test documents (official split lists), every sentence
  python-stdlib.jsonl.gz ~300 chunks of held-out stdlib files (stdlib.is_held_out)
  c-headers.jsonl.gz     ~300 chunks of glibc and GCC headers
  calib-code.jsonl.gz    ~300 KB of stdlib text from files that are NOT held out
  calib-prose.jsonl.gz   ~300 KB of GUM train documents, whole paragraphs
  calib-corpora.jsonl.gz 16 named calibration corpora of ~60 KB (8 prose, 8 code), each
                         line labelled corpus=NAME; see build_calib_corpora
  LICENSES.md            attribution and license of each
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import re
import sys
import sysconfig
import tokenize
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lensbias.concepts.c_code import c_examples, label_c  # noqa: E402
from lensbias.concepts.conllu import gum_genre, read_conllu, read_paragraphs, read_sentences  # noqa: E402
from lensbias.concepts.jsonl import read_jsonl, write_jsonl  # noqa: E402
from lensbias.concepts.python_code import label_python, normalise_newlines, split_chunks  # noqa: E402
from lensbias.concepts.python_code import python_examples  # noqa: E402
from lensbias.concepts.schema import ConceptDataset, Example  # noqa: E402
from lensbias.concepts.stdlib import is_held_out, stdlib_files  # noqa: E402
from lensbias.errors import LensbiasError  # noqa: E402

CODE_CHUNKS = 300
CALIB_CHARS = 300_000
CALIB_DOC_LINES = 120
CALIB_DOC_CHARS = 3000
HEADER_ROOTS = (Path("/usr/include"), Path("/usr/lib/gcc/x86_64-linux-gnu/12/include"))
GLIBC_MARK = "This file is part of the GNU C Library"
GCC_MARK = "GCC Runtime Library Exception"


def stable_key(text: str) -> str:
    """A deterministic pseudo-random order key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spread(per_file: dict[str, list], limit: int, size: Callable[[object], int] = lambda _: 1):
    """Round-robin over files in stable_key order, one item per file per round, until
    ``limit`` (counted by ``size``); items within a file are taken in stable_key order."""
    queues = {name: sorted(items, key=lambda item: stable_key(f"{name}:{item_id(item)}"))
              for name, items in per_file.items() if items}
    order = sorted(queues, key=stable_key)
    chosen, total, round_index = [], 0, 0
    while total < limit and any(round_index < len(queues[name]) for name in order):
        for name in order:
            if round_index < len(queues[name]) and total < limit:
                item = queues[name][round_index]
                chosen.append(item)
                total += size(item)
        round_index += 1
    return chosen


def item_id(item: object) -> str:
    return item.id if isinstance(item, Example) else str(item)


def build_ud(data: Path, out: Path) -> dict[str, int]:
    ewt_dir, gum_dir = data / "ud-english-ewt", data / "ud-english-gum"
    ewt = []
    for split in ("dev", "test"):
        ewt += read_conllu(ewt_dir / f"en_ewt-ud-{split}.conllu", "ewt", split)
    write_jsonl(ConceptDataset("ud-ewt", tuple(ewt)), out / "ud-ewt.jsonl.gz")
    gum = []
    for split in ("dev", "test"):
        for doc in (gum_dir / f"files.{split}").read_text().split():
            gum += read_conllu(gum_dir / "sources" / f"{doc}.conllu", "gum", split)
    write_jsonl(ConceptDataset("ud-gum", tuple(gum)), out / "ud-gum.jsonl.gz")
    return {"ud-ewt": len(ewt), "ud-gum": len(gum)}


def read_python(path: Path) -> str | None:
    try:
        with tokenize.open(path) as handle:  # honours coding cookies and BOMs
            return handle.read()
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def build_python(out: Path) -> dict[str, int]:
    per_file, skipped = {}, 0
    for relpath, path in stdlib_files():
        if not is_held_out(relpath):
            continue
        source = read_python(path)
        try:
            per_file[relpath] = python_examples(source, relpath) if source is not None else None
        except LensbiasError:
            per_file[relpath] = None
        if per_file[relpath] is None:
            skipped += 1
            del per_file[relpath]
    chosen = spread(per_file, CODE_CHUNKS)
    chosen.sort(key=lambda ex: (ex.seq_labels["file"], int(ex.id.rsplit(":", 1)[1])))
    write_jsonl(ConceptDataset("python-stdlib", tuple(chosen)), out / "python-stdlib.jsonl.gz")
    files = len({ex.seq_labels["file"] for ex in chosen})
    return {"held_out_files": len(per_file) + skipped, "skipped_unparsable": skipped,
            "examples": len(chosen), "files_used": files}


def header_files() -> list[tuple[str, Path, str]]:
    """(relpath from /, path, "glibc"|"gcc") of C headers with a known license, sorted."""
    found = []
    for root in HEADER_ROOTS:
        for path in sorted(root.rglob("*.h")):
            if not path.is_file() or "c++" in path.parts:
                continue
            head = path.read_bytes()[:3000].decode("utf-8", "replace")
            owner = "glibc" if GLIBC_MARK in head else "gcc" if GCC_MARK in head else None
            if owner:
                found.append((path.as_posix().lstrip("/"), path, owner))
    return sorted(found)


def build_c(out: Path) -> dict[str, int]:
    per_file, skipped, owners = {}, 0, {}
    for relpath, path, owner in header_files():
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        per_file[relpath] = c_examples(source, relpath)
        owners[relpath] = owner
    chosen = spread(per_file, CODE_CHUNKS)
    chosen.sort(key=lambda ex: (ex.seq_labels["file"], int(ex.id.rsplit(":", 1)[1])))
    write_jsonl(ConceptDataset("c-headers", tuple(chosen)), out / "c-headers.jsonl.gz")
    used = {ex.seq_labels["file"] for ex in chosen}
    return {"header_files": len(per_file), "skipped_not_utf8": skipped, "examples": len(chosen),
            "files_used": len(used), "glibc_files_used": sum(owners[f] == "glibc" for f in used)}


def build_calib_code(out: Path) -> dict[str, int]:
    per_file = {}
    for relpath, path in stdlib_files():
        source = None if is_held_out(relpath) else read_python(path)
        if source is None:
            continue
        source = normalise_newlines(source)
        try:
            spans, priorities = label_python(source)
        except LensbiasError:
            continue
        chunks = split_chunks(source, spans, priorities, CALIB_DOC_LINES, CALIB_DOC_CHARS)
        seq = {"domain": "code", "language": "python", "file": relpath}
        per_file[relpath] = [Example(f"{relpath}:{c.first_line}", c.text, (), dict(seq))
                             for c in chunks]
    chosen = spread(per_file, CALIB_CHARS, size=lambda ex: len(ex.text))
    write_jsonl(ConceptDataset("calib-code", tuple(chosen)), out / "calib-code.jsonl.gz")
    return {"documents": len(chosen), "chars": sum(len(ex.text) for ex in chosen)}


def paragraph_pieces(paragraphs: Sequence[str], limit: int, sep: str = "\n\n") -> list[str]:
    """Consecutive whole paragraphs joined by ``sep`` (blank lines), each piece <= limit if
    possible."""
    pieces, current = [], []
    for paragraph in paragraphs:
        if current and len(sep.join(current + [paragraph])) > limit:
            pieces.append(sep.join(current))
            current = []
        current.append(paragraph)
    if current:
        pieces.append(sep.join(current))
    return pieces


def build_calib_prose(data: Path, out: Path) -> dict[str, int]:
    gum_dir = data / "ud-english-gum"
    per_doc, missing = {}, 0
    for doc in (gum_dir / "files.train").read_text().split():
        path = gum_dir / "sources" / f"{doc}.conllu"
        if not path.is_file():  # reddit documents are not distributed with UD GUM
            missing += 1
            continue
        with path.open(encoding="utf-8") as handle:
            genre = gum_genre(next(read_sentences(handle)), doc)
        seq = {"domain": "prose", "corpus": "gum", "genre": genre, "split": "train", "doc": doc}
        pieces = paragraph_pieces(read_paragraphs(path), CALIB_DOC_CHARS)
        per_doc[doc] = [Example(f"{doc}:{index}", text, (), dict(seq))
                        for index, text in enumerate(pieces)]
    chosen = spread(per_doc, CALIB_CHARS, size=lambda ex: len(ex.text))
    write_jsonl(ConceptDataset("calib-prose", tuple(chosen)), out / "calib-prose.jsonl.gz")
    return {"documents": len(chosen), "chars": sum(len(ex.text) for ex in chosen),
            "gum_docs_used": len({ex.seq_labels["doc"] for ex in chosen}),
            "train_docs_missing": missing}


# --- calib-corpora.jsonl.gz: several named calibration corpora per domain (issue 14) ---

CORPUS_CHARS = 60_000
"""Characters per named calibration corpus (each stops at the first piece past this)."""
GUM_GENRES = ("academic", "fiction", "interview", "news")
STDLIB_CORPORA = 4
STDLIB_EXCLUDED = ("test", "idlelib", "lib2to3", "distutils", "encodings", "pydoc_data")
"""Top-level stdlib packages never made a corpus: the test suite, the IDLE application,
the packages deprecated and removed from the stdlib (lib2to3, distutils), and the two
that are generated data rather than code (encodings: codec tables; pydoc_data: one dict
of documentation prose)."""
SITE_CORPORA = 2
SITE_EXCLUDED = ("lensbias", "torch")
SITE_MIN_BYTES = 200_000
PERMISSIVE = ("MIT", "BSD", "Apache")
NOT_PERMISSIVE = ("GPL", "MPL", "PSF", "CNRI", "Zlib", "ISC", "LLVM", "Python", "Unlicense",
                  "Proprietary", "0BSD")
NO_SPACE_BEFORE = frozenset({".", ",", ";", ":", "!", "?", ")", "]", "}", "%", "...", "'",
                             "''", "\u2019", "\u201d", "n't", "n\u2019t"})
NO_SPACE_AFTER = frozenset({"(", "[", "{", "$", "#", "``", "\u201c", "\u2018"})
CLITICS = ("s", "re", "ve", "ll", "d", "m")


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens back to running text, by a fixed rule: join with single spaces, except no
    space before ``. , ; : ! ? ) ] } % ... ' '' ’ ” n't`` and the clitics ``'s 're 've 'll
    'd 'm`` (straight or curly apostrophe), and none after ``( [ { $ #`` and Brown's
    opening quote (two backticks) or ``“ ‘``. Brown's two quote tokens (two backticks, two
    apostrophes) become ``"``; a straight ``"`` token opens and closes in turn (within one
    call: a paragraph or a line)."""
    out: list[str] = []
    glue_next = True  # no space before the first token
    quote_open = False
    for token in tokens:
        text, before, after = token, True, True
        if token == "``":
            text, after = '"', False
        elif token == "''":
            text, before = '"', False
        elif token == '"':
            before, after = (False, True) if quote_open else (True, False)
            quote_open = not quote_open
        elif token.lower() in NO_SPACE_BEFORE or (
                token[:1] in "'\u2019" and token[1:].lower() in CLITICS):
            before = False
        elif token in NO_SPACE_AFTER:
            after = False
        if out and before and not glue_next:
            out.append(" ")
        out.append(text)
        glue_next = not after
    return "".join(out)


def untag(tokens: Sequence[str], sep: str) -> list[str]:
    """``word/tag`` (Brown) or ``word_TAG`` (MASC) -> word: the tag is after the last sep;
    a token without sep is kept whole, one with an empty word (MASC's ``_NNP``) dropped."""
    words = [token.rsplit(sep, 1)[0] if sep in token else token for token in tokens]
    return [word for word in words if word]


def lazy_spread(names: Sequence[str], load: Callable[[str], list], limit: int,
                size: Callable[[object], int]) -> list:
    """``spread({n: load(n) for n in names}, limit, size)``, loading (labelling) only the
    files it reaches: spread's first round takes one item per file in stable_key order, so
    once that round reaches ``limit`` the files after it cannot change the result."""
    order = sorted(names, key=stable_key)
    per_file, total = {}, 0
    for position, name in enumerate(order):
        items = load(name)
        if items:
            per_file[name] = items
            first = min(items, key=lambda item: stable_key(f"{name}:{item_id(item)}"))
            total += size(first)
        if total >= limit:
            break
    else:
        position = len(order)
    chosen = spread(per_file, limit, size)
    if position < len(order):  # stopped early: spread's first round is all it took
        assert len(chosen) == len(per_file)
    return chosen


def corpus_example(corpus: str, doc: str, index: int | str, text: str, domain: str,
                   **labels: str) -> Example:
    seq = {"domain": domain, "corpus": corpus, "doc": doc, **labels}
    return Example(f"{corpus}:{doc}:{index}", text, (), seq)


def split_long(paragraph: str, limit: int = CALIB_DOC_CHARS) -> list[str]:
    """A paragraph longer than ``limit`` cut at sentence ends (``. ! ?`` then whitespace)
    into runs of whole sentences, and a sentence still longer at spaces; else itself."""
    if len(paragraph) <= limit:
        return [paragraph]
    units = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        units += [sentence] if len(sentence) <= limit else paragraph_pieces(
            sentence.split(" "), limit, " ")
    return paragraph_pieces(units, limit, " ")


def prose_pieces(corpus: str, doc: str, paragraphs: Sequence[str], sep: str = "\n\n",
                 **labels: str) -> list[Example]:
    """Runs of whole paragraphs (split_long) of at most CALIB_DOC_CHARS, joined by sep."""
    units = [piece for p in paragraphs if p.strip() for piece in split_long(p.strip())]
    pieces = paragraph_pieces(units, CALIB_DOC_CHARS, sep)
    return [corpus_example(corpus, doc, i, text, "prose", **labels)
            for i, text in enumerate(pieces)]


def chars(example: object) -> int:
    return len(example.text)  # type: ignore[attr-defined]


def gum_corpus(data: Path, genre: str) -> list[Example]:
    """Train documents of one GUM genre (the official split list; dev and test are concept
    data), whole paragraphs as build_calib_prose reads them."""
    gum_dir = data / "ud-english-gum"
    corpus, per_doc = f"gum-{genre}", {}
    for doc in (gum_dir / "files.train").read_text().split():
        path = gum_dir / "sources" / f"{doc}.conllu"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as handle:
            if gum_genre(next(read_sentences(handle)), doc) != genre:
                continue
        per_doc[doc] = prose_pieces(corpus, doc, read_paragraphs(path), genre=genre,
                                    split="train")
    return spread(per_doc, CORPUS_CHARS, size=chars)


def zip_texts(path: Path) -> dict[str, str]:
    """name -> UTF-8 text of every file in a zip (files that are not UTF-8 are left out)."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            try:
                out[info.filename] = archive.read(info).decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


def blocks(text: str) -> list[list[str]]:
    """Blank-line separated blocks of non-blank lines (stripped)."""
    out: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            out[-1].append(line.strip())
        elif out[-1]:
            out.append([])
    return [block for block in out if block]


def brown_corpus(data: Path) -> list[Example]:
    """Brown: tags stripped, each paragraph detokenized; spread over its 15 genres."""
    files = zip_texts(data / "prose-corpora" / "brown.zip")
    genres = dict(line.split() for line in files["brown/cats.txt"].splitlines() if line.strip())
    per_genre: dict[str, list[Example]] = {}
    for doc, genre in sorted(genres.items()):
        paragraphs = [detokenize(untag(" ".join(block).split(), "/"))
                      for block in blocks(files[f"brown/{doc}"])]
        per_genre.setdefault(genre, []).extend(prose_pieces("brown", doc, paragraphs,
                                                            genre=genre))
    return spread(per_genre, CORPUS_CHARS, size=chars)


def state_union_corpus(data: Path) -> list[Example]:
    """State of the Union: each line a paragraph, as distributed (plain text); the six
    addresses that are not valid UTF-8 (mis-encoded punctuation) are left out."""
    files = zip_texts(data / "prose-corpora" / "state_union.zip")
    per_doc = {}
    for name, text in files.items():
        if not name.endswith(".txt"):
            continue
        doc = Path(name).stem
        per_doc[doc] = prose_pieces("state-union", doc,
                                    [line.strip() for line in text.splitlines()])
    return spread(per_doc, CORPUS_CHARS, size=chars)


def movie_reviews_corpus(data: Path) -> list[Example]:
    """Movie reviews: each line (a sentence) detokenized, kept lower-case, a review's
    sentences joined by spaces (a review has no paragraphs); whole reviews where they fit."""
    files = zip_texts(data / "prose-corpora" / "movie_reviews.zip")
    per_doc = {}
    for name, text in files.items():
        if not name.endswith(".txt"):
            continue
        polarity, stem = name.split("/")[-2:]
        doc = f"{polarity}/{Path(stem).stem}"
        sentences = [detokenize(line.split()) for line in text.splitlines() if line.strip()]
        per_doc[doc] = prose_pieces("movie-reviews", doc, sentences, sep=" ",
                                    polarity=polarity)
    return spread(per_doc, CORPUS_CHARS, size=chars)


def masc_corpus(data: Path) -> list[Example]:
    """MASC written files: tags stripped, each paragraph detokenized; spread over genres."""
    files = zip_texts(data / "prose-corpora" / "masc_tagged.zip")
    genres = {}
    for line in files["masc_tagged/categories.txt"].splitlines():
        if line.strip():
            name, genre = line.split(maxsplit=1)
            genres[name] = genre.strip()
    per_genre: dict[str, list[Example]] = {}
    for name, text in files.items():
        rel = name.removeprefix("masc_tagged/")
        if not rel.startswith("written/") or not rel.endswith(".txt"):
            continue
        genre = genres.get(rel, "uncategorised")
        doc = Path(rel).stem
        paragraphs = [detokenize(untag(" ".join(block).split(), "_"))
                      for block in blocks(text)]
        per_genre.setdefault(genre, []).extend(prose_pieces("masc", doc, paragraphs,
                                                            genre=genre))
    return spread(per_genre, CORPUS_CHARS, size=chars)


def code_pieces(corpus: str, relpath: str, source: str | None, language: str,
                **labels: str) -> list[Example]:
    """A file cut as calib-code cuts stdlib files (whole lines, <= 120 lines and 3,000
    characters); [] if it does not parse."""
    if source is None:
        return []
    source = normalise_newlines(source)
    try:
        spans, priorities = (label_python if language == "python" else label_c)(source)
    except LensbiasError:
        return []
    chunks = split_chunks(source, spans, priorities, CALIB_DOC_LINES, CALIB_DOC_CHARS)
    return [corpus_example(corpus, relpath, c.first_line, c.text, "code", language=language,
                           file=relpath, **labels) for c in chunks]


def stdlib_packages() -> list[tuple[str, int]]:
    """The STDLIB_CORPORA largest top-level stdlib packages, by characters of .py source
    in files that are not held out (stdlib.is_held_out), STDLIB_EXCLUDED left out."""
    sizes: dict[str, int] = {}
    for relpath, path in stdlib_files():
        top = relpath.split("/")[0]
        if "/" not in relpath or top in STDLIB_EXCLUDED or is_held_out(relpath):
            continue
        source = read_python(path)
        sizes[top] = sizes.get(top, 0) + len(source or "")
    return sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:STDLIB_CORPORA]


def stdlib_corpus(package: str) -> list[Example]:
    corpus = f"stdlib-{package}"
    paths = {rel: path for rel, path in stdlib_files()
             if rel.startswith(f"{package}/") and not is_held_out(rel)}
    return lazy_spread(sorted(paths), lambda rel: code_pieces(
        corpus, rel, read_python(paths[rel]), "python"), CORPUS_CHARS, chars)


@dataclass(frozen=True)
class SitePackage:
    name: str
    version: str
    license: str
    py_bytes: int
    files: tuple[tuple[str, Path], ...]
    """(relpath under site-packages, path) of its .py files, sorted."""
    license_files: tuple[tuple[str, str], ...] = ()
    """(name, text) of the license files its .dist-info ships."""


def permissive_license(meta) -> str | None:
    """The distribution's license as its metadata states it (License-Expression, else the
    License field's first line, else the License classifiers), if that names MIT, BSD or
    Apache and no other license."""
    text = (meta.get("License-Expression") or "").strip()
    if not text:
        text = (meta.get("License") or "").strip().splitlines()[0:1]
        text = text[0].strip() if text else ""
    if not text:
        text = "; ".join(c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                         if c.startswith("License ::"))
    if not re.search(r"\b(?:%s)\b" % "|".join(PERMISSIVE), text):
        return None
    if re.search("|".join(NOT_PERMISSIVE), text):
        return None
    return text


def site_packages() -> list[SitePackage]:
    """The SITE_CORPORA installed distributions with the most bytes of .py source, among
    those whose license (permissive_license) is MIT, BSD or Apache, that ship no compiled
    extension (.so/.pyd) and at least SITE_MIN_BYTES of .py, SITE_EXCLUDED left out."""
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    found = []
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        license_ = permissive_license(dist.metadata)
        records = dist.files or []
        if name in SITE_EXCLUDED or license_ is None or any(
                str(f).endswith((".so", ".pyd")) for f in records):
            continue
        files = []
        for record in records:
            path = Path(record.locate()).resolve()
            if str(record).endswith(".py") and path.is_file() and purelib in path.parents:
                files.append((path.relative_to(purelib).as_posix(), path))
        size = sum(path.stat().st_size for _, path in files)
        if size >= SITE_MIN_BYTES:
            texts = tuple((Path(str(f)).name, Path(f.locate()).read_text(encoding="utf-8"))
                          for f in sorted(records, key=str)
                          if ".dist-info/" in str(f) and Path(str(f)).name.upper().startswith(
                              ("LICENSE", "LICENCE", "COPYING")))
            found.append(SitePackage(name, dist.version, license_, size, tuple(sorted(files)),
                                     texts))
    found.sort(key=lambda s: (-s.py_bytes, s.name))
    return found[:SITE_CORPORA]


def site_corpus(package: SitePackage) -> list[Example]:
    corpus, paths = f"site-{package.name}", dict(package.files)
    return lazy_spread(sorted(paths), lambda rel: code_pieces(
        corpus, rel, read_python(paths[rel]), "python", package=package.name,
        version=package.version, license=package.license), CORPUS_CHARS, chars)


def c_corpus(out: Path, owner: str) -> list[Example]:
    """Headers of one owner (glibc or gcc) that no c-headers example comes from."""
    used = {ex.seq_labels["file"] for ex in read_jsonl(out / "c-headers.jsonl.gz").examples}
    paths = {rel: path for rel, path, who in header_files() if who == owner and rel not in used}

    def load(rel: str) -> list[Example]:
        try:
            source = paths[rel].read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return []
        return code_pieces(f"c-{owner}", rel, source, "c")

    return lazy_spread(sorted(paths), load, CORPUS_CHARS, chars)


def build_calib_corpora(data: Path, out: Path,
                        site: Sequence[SitePackage]) -> dict[str, dict[str, int]]:
    corpora: dict[str, list[Example]] = {}
    for genre in GUM_GENRES:
        corpora[f"gum-{genre}"] = gum_corpus(data, genre)
    corpora["brown"] = brown_corpus(data)
    corpora["state-union"] = state_union_corpus(data)
    corpora["movie-reviews"] = movie_reviews_corpus(data)
    corpora["masc"] = masc_corpus(data)
    for package, _ in stdlib_packages():
        corpora[f"stdlib-{package}"] = stdlib_corpus(package)
    for package in site:
        corpora[f"site-{package.name}"] = site_corpus(package)
    for owner in ("glibc", "gcc"):
        corpora[f"c-{owner}"] = c_corpus(out, owner)
    examples = tuple(ex for chosen in corpora.values() for ex in chosen)
    write_jsonl(ConceptDataset("calib-corpora", examples), out / "calib-corpora.jsonl.gz")
    return {name: {"documents": len(chosen), "chars": sum(map(chars, chosen)),
                   "sources": len({ex.seq_labels["doc"] for ex in chosen})}
            for name, chosen in corpora.items()}


BUILDERS = ("ud", "python-stdlib", "c-headers", "calib-code", "calib-prose", "calib-corpora")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=REPO / "src/lensbias/concepts/data")
    parser.add_argument("--only", action="append", choices=BUILDERS,
                        help="build only this file (repeatable; LICENSES.md is always "
                             "written); calib-corpora reads c-headers.jsonl.gz from --out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or BUILDERS)
    site = site_packages()
    builders = {"ud": lambda: build_ud(args.data, args.out),
                "python-stdlib": lambda: build_python(args.out),
                "c-headers": lambda: build_c(args.out),
                "calib-code": lambda: build_calib_code(args.out),
                "calib-prose": lambda: build_calib_prose(args.data, args.out),
                "calib-corpora": lambda: build_calib_corpora(args.data, args.out, site)}
    report = {name: build() for name, build in builders.items() if name in only}
    (args.out / "LICENSES.md").write_text(licenses_text(site), encoding="utf-8")
    for name, numbers in report.items():
        if name == "calib-corpora":
            print("calib-corpora:")
            for corpus, counts in numbers.items():
                print(f"  {corpus}: {counts}")
        else:
            print(f"{name}: {numbers}")
    for package in site:
        print(f"site-{package.name}: {package.name} {package.version}, license "
              f"{package.license!r}, {package.py_bytes:,} bytes of .py")
    for path in sorted(args.out.iterdir()):
        print(f"{path.name}: {path.stat().st_size:,} bytes")
    return 0


def licenses_text(site: Sequence[SitePackage] = ()) -> str:
    """LICENSES.md: attribution and license of every packaged data file (``site``: the
    site-packages distributions calib-corpora.jsonl.gz draws on)."""
    version = ".".join(map(str, sys.version_info[:3]))
    return _licenses_main(version) + _licenses_corpora(site)


def _licenses_main(version: str) -> str:
    return f"""# Licenses of the packaged data

The files in this folder are derived data, written by `scripts/build_datasets.py`.
The lensbias code is MIT; these data files keep the licenses of their sources.

## ud-ewt.jsonl.gz: UD English Web Treebank v2.15 (dev and test)

Universal Dependencies English Web Treebank annotations (c) 2013-2021
by The Board of Trustees of The Leland Stanford Junior University.
All Rights Reserved.

The annotations and database rights of the Universal Dependencies
English Web Treebank are licensed under a
Creative Commons Attribution-ShareAlike 4.0 International License.
See <http://creativecommons.org/licenses/by-sa/4.0/>.

The underlying texts come from various sources collected for the
LDC English Web Treebank. Some parts are in the public domain.
Portions may be (c) 2012 Google Inc., (c) 2011 Yahoo! Inc.,
(c) 2012 Trustees of the University of Pennsylvania and/or
(c) other original authors.

Changes: sentences converted to text + character spans carrying UPOS, coarse deprel
and the features Tense, Number, VerbForm, Person, Mood. This derived file is
distributed under the same license (CC BY-SA 4.0).

Cite: Natalia Silveira, Timothy Dozat, Marie-Catherine de Marneffe, Samuel Bowman,
Miriam Connor, John Bauer and Christopher D. Manning (2014). A Gold Standard
Dependency Corpus for English. Proceedings of LREC-2014.

## ud-gum.jsonl.gz and calib-prose.jsonl.gz: UD English GUM

Source: UD_English-GUM at commit afb41ee9bca57991125814fa04d96a0e61470c8b;
ud-gum.jsonl.gz holds the dev and test documents (official split lists),
calib-prose.jsonl.gz paragraphs of train documents (so do the gum-academic,
gum-fiction, gum-interview and gum-news corpora of calib-corpora.jsonl.gz).

The treebank is licensed under the Creative Commons License
Attribution-NonCommercial-ShareAlike 4.0 International.
The complete license text is available at:
http://creativecommons.org/licenses/by-nc-sa/4.0/legalcode

GUM is made available under a Creative Commons license in keeping with the
underlying texts. [...] wikiHow texts are made available under a CC-BY-NC-SA
license (non-commercial, share alike), as are the fiction texts, meaning that
commercial and/or non-open source use of those texts is prohibited.
When using the annotated data in this repository, please make sure to cite the
sources of the texts as required by their source sites, and give credit to the
GUM annotators, which are listed on the project website, for the annotated data.

These derived files are distributed under CC BY-NC-SA 4.0: research and other
non-commercial use only.

Cite: Zeldes, Amir (2017) "The GUM Corpus: Creating Multilayer Resources in the
Classroom". Language Resources and Evaluation 51(3), 581-612.

## python-stdlib.jsonl.gz and calib-code.jsonl.gz: CPython standard library

Chunks of the Python {version} standard library source (held-out files for
python-stdlib, the other files for calib-code and the stdlib-* corpora of
calib-corpora.jsonl.gz). Copyright (c) 2001 Python Software
Foundation; All Rights Reserved. Licensed under the PSF License Agreement
(Python Software Foundation License Version 2), https://docs.python.org/3/license.html

## c-headers.jsonl.gz: glibc and GCC headers (and calib-corpora's c-glibc, c-gcc)

- Headers of the GNU C Library (files under usr/include that say "This file is part
  of the GNU C Library"): Copyright (C) Free Software Foundation, Inc.; licensed under
  the GNU Lesser General Public License, version 2.1 or (at your option) any later
  version (LGPL-2.1-or-later).
- Headers shipped with GCC 12 (usr/lib/gcc/x86_64-linux-gnu/12/include): Copyright (C)
  Free Software Foundation, Inc.; licensed under the GNU General Public License,
  version 3 or later, with the GCC Runtime Library Exception, version 3.1
  (GPL-3.0-or-later WITH GCC-exception-3.1).

Each example's `file` label names the header it comes from (c-glibc and c-gcc in
calib-corpora.jsonl.gz: headers that c-headers.jsonl.gz does not use).
"""


def _licenses_corpora(site: Sequence[SitePackage]) -> str:
    """The sections of the sources only calib-corpora.jsonl.gz draws on."""
    parts = ["""
## calib-corpora.jsonl.gz: named calibration corpora

Sixteen named corpora of about 60,000 characters each (the `corpus` label of every
line). The GUM, standard-library and C-header corpora are licensed as in the sections
above; the others below. Brown, MASC and the movie reviews are tokenized in their source:
their tags were stripped and the tokens rejoined (scripts/build_datasets.py,
`detokenize`); nothing else was changed.

### brown: the Brown Corpus (NLTK data distribution)

W. N. Francis and H. Kucera (1964), A Standard Corpus of Present-Day Edited American
English, for use with Digital Computers. Department of Linguistics, Brown University,
Providence, Rhode Island, USA. Revised 1971, revised and amplified 1979.
<http://www.hit.uib.no/icame/brown/bcm.html>

License (NLTK's brown.xml): "May be used for non-commercial purposes." The corpus README:
"Distributed with the permission of the copyright holder, redistribution permitted."
The brown corpus of this file is for research and other non-commercial use only.

### state-union: C-Span State of the Union Address Corpus (NLTK data distribution)

US presidential State of the Union addresses 1945-2006, compiled by Kathleen Ahrens from
the C-Span sources (<http://www.c-span.org/executive/stateoftheunion.asp>).
License (NLTK's state_union.xml): public domain.

### movie-reviews: Sentiment Polarity Dataset Version 2.0 (NLTK data distribution)

Copyright (C) 2004 Bo Pang and Lillian Lee.
<http://www.cs.cornell.edu/people/pabo/movie-review-data/>
Licensed under the Creative Commons Attribution 4.0 International License,
<http://creativecommons.org/licenses/by/4.0/>. Changes: tokens rejoined (detokenized).

Cite: Bo Pang and Lillian Lee (2004). A Sentimental Education: Sentiment Analysis Using
Subjectivity Summarization Based on Minimum Cuts. Proceedings of ACL 2004.

### masc: MASC Tagged Corpus (NLTK data distribution), written part

Copyright (C) 2014 American National Corpus; Nancy Ide. <http://www.anc.org/>
License (NLTK's masc_tagged.xml): "This data may be used for the purposes of linguistic
education, research, and development, including commercial development."
Changes: part-of-speech tags stripped, tokens rejoined.
"""]
    for package in site:
        parts.append(f"""
### site-{package.name}: {package.name} {package.version} (Python package)

Chunks of the .py source of the {package.name} distribution, version {package.version},
as installed from the Python Package Index. License in its metadata: {package.license}.
The license files it ships follow, verbatim.
""")
        for name, text in package.license_files:
            body = "\n".join(f"    {line}".rstrip() for line in text.strip().splitlines())
            parts.append(f"\n{name}:\n\n{body}\n")
    return "".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
