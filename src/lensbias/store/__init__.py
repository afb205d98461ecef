"""Store: HDF5 activation caches (format, writer, reader)."""

from lensbias.store.format import CacheConfig
from lensbias.store.reader import ActivationStore, read_fingerprint, verify
from lensbias.store.writer import cache_activations

__all__ = ["ActivationStore", "CacheConfig", "cache_activations", "read_fingerprint", "verify"]
