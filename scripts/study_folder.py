"""Lay committed study rows (docs/study/*-results.jsonl.gz) out as one sweep folder.

    python scripts/study_folder.py OUT ROWS.jsonl.gz [ROWS.jsonl.gz ...]

OUT gets the journal ``lensbias sweep`` keeps (``results.jsonl`` and ``done``; see
``lensbias.sweep.run``), holding every cell of the given files in the order given, so that
``lensbias sweep-report OUT``, ``python scripts/study_tables.py OUT`` and
``lensbias.sweep.read_results(OUT)`` read the committed rows as they read a finished sweep.
No cell is rerun, and OUT has no ``cells/`` (the report then links no per-cell page). OUT
must not exist yet; a cell id found in two files is an error.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from lensbias.sweep.run import DONE, RESULTS

ATTEMPT = "committed"


def lay_out(out: Path, files: list[Path]) -> int:
    if out.exists():
        sys.exit(f"study_folder: {out} exists; give a new folder")
    seen: dict[str, int] = {}  # cell id -> the argument it came from
    lines: list[str] = []
    done: dict[str, None] = {}  # cell ids in the order first met
    for i, path in enumerate(files):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                cid = str(row["cell_id"])
                if seen.setdefault(cid, i) != i:
                    sys.exit(f"study_folder: cell {cid} is in both {files[seen[cid]]} and {path}")
                done.setdefault(cid)
                lines.append(json.dumps({**row, "_attempt": ATTEMPT}, allow_nan=False))
    out.mkdir()
    (out / RESULTS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / DONE).write_text("".join(f"{cid} {ATTEMPT}\n" for cid in done), encoding="utf-8")
    return len(done)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    n = lay_out(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    print(f"{sys.argv[1]}: {n} cells")
