"""Concepts, stage 0: which standard-library files the tiny models may train on.

The rule is fixed: a file is held out (never trained on, used for code probes) when
``int(sha256(relpath).hexdigest(), 16) % 10 == 0``, relpath being POSIX-style under the stdlib.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path


def stdlib_root() -> Path:
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[tuple[str, Path]]:
    """Every ``.py`` file of the stdlib (site-packages excluded), sorted by relative path."""
    root = stdlib_root()
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("site-packages/") or "/site-packages/" in rel:
            continue
        found.append((rel, path))
    return sorted(found)


def is_held_out(relpath: str) -> bool:
    """True for the fixed ~10% of stdlib files that no built-in model trains on."""
    return int(hashlib.sha256(relpath.encode()).hexdigest(), 16) % 10 == 0
