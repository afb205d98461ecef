"""Probes: linear read-outs of concepts from cached activations."""

from lensbias.probes.linear import ProbeResult, fit_probe, grouped_split

__all__ = ["ProbeResult", "fit_probe", "grouped_split"]
