"""Build the packaged concept datasets and calibration corpora in src/lensbias/concepts/data/.

Run once by a maintainer (needs the UD treebanks under --data); the package never reads them.

    python scripts/build_datasets.py [--data /work/shared/data] [--out src/lensbias/concepts/data]

Writes (deterministic: fixed order and choices, gzip mtime 0):
  ud-ewt.jsonl.gz        EWT dev + test, every sentence
  ud-gum.jsonl.gz        GUM dev + test documents (official split lists), every sentence
  python-stdlib.jsonl.gz ~300 chunks of held-out stdlib files (stdlib.is_held_out)
  c-headers.jsonl.gz     ~300 chunks of glibc and GCC headers
  calib-code.jsonl.gz    ~300 KB of stdlib text from files that are NOT held out
  calib-prose.jsonl.gz   ~300 KB of GUM train documents, whole paragraphs
  LICENSES.md            attribution and license of each
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lensbias.concepts.c_code import c_examples  # noqa: E402
from lensbias.concepts.conllu import gum_genre, read_conllu, read_paragraphs, read_sentences  # noqa: E402
from lensbias.concepts.jsonl import write_jsonl  # noqa: E402
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


def paragraph_pieces(paragraphs: Sequence[str], limit: int) -> list[str]:
    """Consecutive whole paragraphs joined by blank lines, each piece <= limit if possible."""
    pieces, current = [], []
    for paragraph in paragraphs:
        if current and len("\n\n".join(current + [paragraph])) > limit:
            pieces.append("\n\n".join(current))
            current = []
        current.append(paragraph)
    if current:
        pieces.append("\n\n".join(current))
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=REPO / "src/lensbias/concepts/data")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"ud": build_ud(args.data, args.out), "python-stdlib": build_python(args.out),
              "c-headers": build_c(args.out), "calib-code": build_calib_code(args.out),
              "calib-prose": build_calib_prose(args.data, args.out)}
    (args.out / "LICENSES.md").write_text(licenses_text(), encoding="utf-8")
    for name, numbers in report.items():
        print(f"{name}: {numbers}")
    for path in sorted(args.out.iterdir()):
        print(f"{path.name}: {path.stat().st_size:,} bytes")
    return 0


def licenses_text() -> str:
    """LICENSES.md: attribution and license of every packaged data file."""
    version = ".".join(map(str, sys.version_info[:3]))
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
calib-prose.jsonl.gz paragraphs of train documents.

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
python-stdlib, the other files for calib-code). Copyright (c) 2001 Python Software
Foundation; All Rights Reserved. Licensed under the PSF License Agreement
(Python Software Foundation License Version 2), https://docs.python.org/3/license.html

## c-headers.jsonl.gz: glibc and GCC headers

- Headers of the GNU C Library (files under usr/include that say "This file is part
  of the GNU C Library"): Copyright (C) Free Software Foundation, Inc.; licensed under
  the GNU Lesser General Public License, version 2.1 or (at your option) any later
  version (LGPL-2.1-or-later).
- Headers shipped with GCC 12 (usr/lib/gcc/x86_64-linux-gnu/12/include): Copyright (C)
  Free Software Foundation, Inc.; licensed under the GNU General Public License,
  version 3 or later, with the GCC Runtime Library Exception, version 3.1
  (GPL-3.0-or-later WITH GCC-exception-3.1).

Each example's `file` label names the header it comes from.
"""


if __name__ == "__main__":
    raise SystemExit(main())
