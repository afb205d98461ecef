"""Behaviour, shared: A's half of a behaviour measurement, computed once per process.

Every cell of a sweep compares a different B against the *same* A, and A's losses, bits
per byte and sentence embeddings depend only on A's weights and the fixed inputs. Those
results are memoised here, keyed by A's ``weights_hash()`` (sha256 over every parameter)
and the inputs' identity, so a worker that runs many cells computes them once. The hash is
recomputed on every call (weights changed in place get a new key; sha256 of MiniLM's
90 MB takes about 0.2 s). Only the
last ``MAX_ENTRIES`` results are kept. ``clear()`` empties it (tests).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
MAX_ENTRIES = 8
_MEMO: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def of_model(lm: Any, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
    """``compute()`` for model ``lm`` and inputs ``key``, from the memo when seen before."""
    full = (lm.weights_hash(), lm.name, str(next(lm.model.parameters()).device), *key)
    if full in _MEMO:
        _MEMO.move_to_end(full)
        return copy.deepcopy(_MEMO[full])
    value = compute()
    _MEMO[full] = copy.deepcopy(value)  # callers may change what they got; the memo may not
    while len(_MEMO) > MAX_ENTRIES:
        _MEMO.popitem(last=False)
    return value


def clear() -> None:
    _MEMO.clear()
