"""Lay committed study rows (docs/study/*-results.jsonl.gz) out as one sweep folder.

    python scripts/study_folder.py OUT ROWS.jsonl.gz [ROWS.jsonl.gz ...] [--max-boot N]

OUT gets the journal ``lensbias sweep`` keeps (``results.jsonl`` and ``done``; see
``lensbias.sweep.run``), holding every cell of the given files in the order given, so that
``lensbias sweep-report OUT``, ``python scripts/study_tables.py OUT`` and
``lensbias.sweep.read_results(OUT)`` read the committed rows as they read a finished sweep.
No cell is rerun, and OUT has no ``cells/`` (the report then links no per-cell page). OUT
must not exist yet; a cell id found in two files is an error. Every error is one line and
exit code 2, found before anything is written. With ``--max-boot N`` it
then writes ``OUT/analysis.json`` as ``lensbias sweep --max-boot N`` would at the end of a
sweep of these cells (``lensbias.sweep.analyse``), and prints how long that took.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

from lensbias.sweep import read_results
from lensbias.sweep.analysis import write_analysis as sweep_analysis
from lensbias.sweep.run import DONE, RESULTS

ATTEMPT = "committed"


def fail(message: str) -> None:
    """One line on stderr, exit code 2 (a user error)."""
    print(f"study_folder: {message}", file=sys.stderr)
    raise SystemExit(2)


def lay_out(out: Path, files: list[Path]) -> int:
    if out.exists():
        fail(f"{out} exists; give a new folder")
    if not out.parent.is_dir():
        fail(f"{out.parent} is not a folder")
    seen: dict[str, int] = {}  # cell id -> the argument it came from
    lines: list[str] = []
    done: dict[str, None] = {}  # cell ids in the order first met
    for i, path in enumerate(files):
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    row = json.loads(line)
                    if not isinstance(row, dict) or "cell_id" not in row:
                        fail(f"{path}:{n}: not a results row (no cell_id)")
                    cid = str(row["cell_id"])
                    if seen.setdefault(cid, i) != i:
                        fail(f"cell {cid} is in both {files[seen[cid]]} and {path}")
                    done.setdefault(cid)
                    lines.append(json.dumps({**row, "_attempt": ATTEMPT}, allow_nan=False))
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as err:
            fail(f"cannot read {path}: {getattr(err, 'strerror', None) or err}")
    out.mkdir()
    (out / RESULTS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / DONE).write_text("".join(f"{cid} {ATTEMPT}\n" for cid in done), encoding="utf-8")
    return len(done)


def write_analysis(out: Path, max_boot: int) -> float:
    """``lensbias.sweep.analysis.write_analysis`` of the folder's rows (what ``lensbias
    sweep`` leaves beside its results); returns the seconds it took."""
    start = time.perf_counter()
    sweep_analysis(read_results(out), out, max_boot)
    return time.perf_counter() - start


def parse(args: list[str]) -> tuple[Path, list[Path], int | None]:
    """OUT, the rows files and --max-boot (None: no analysis), checked."""
    max_boot = None
    if "--max-boot" in args:
        at = args.index("--max-boot")
        value = args[at + 1] if at + 1 < len(args) else ""
        if not value.isdigit() or int(value) < 100:
            fail(f"--max-boot needs a whole number >= 100, got {value!r}")
        max_boot = int(value)
        args = args[:at] + args[at + 2:]
    if len(args) < 2:
        fail("usage: study_folder.py OUT ROWS.jsonl.gz [ROWS.jsonl.gz ...] [--max-boot N]")
    return Path(args[0]), [Path(p) for p in args[1:]], max_boot


if __name__ == "__main__":
    out, files, max_boot = parse(sys.argv[1:])
    print(f"{out}: {lay_out(out, files)} cells", flush=True)
    if max_boot:
        print(f"{out / 'analysis.json'}: {write_analysis(out, max_boot):.0f} s", flush=True)
