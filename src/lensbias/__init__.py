"""lensbias: which code and prose concepts survive model compression, and where.

Reads in the order data flows: models → compress → concepts → store → probes / saes /
geometry / behaviour → survival → report → cli. Public names are imported lazily so that
``import lensbias`` and ``lensbias --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "LensbiasError": "lensbias.errors",
    "load_model": "lensbias.models",
    "list_models": "lensbias.models",
    "LoadedModel": "lensbias.models",
    "load_dataset": "lensbias.concepts.registry",
    "list_datasets": "lensbias.concepts.registry",
    "load_concept_set": "lensbias.concepts.sets",
    "list_concept_sets": "lensbias.concepts.sets",
    "CacheConfig": "lensbias.store",
    "cache_activations": "lensbias.store",
    "ActivationStore": "lensbias.store",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lensbias' has no attribute {name!r}")
