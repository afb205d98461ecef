"""Concept-probe definitions shipped with lensbias (YAML), importable as lensbias.probe_sets."""
