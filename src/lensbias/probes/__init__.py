"""Probes: linear read-outs of concepts from cached activations, and their survival A → B."""

from lensbias.probes.fast import LinearProbe
from lensbias.probes.linear import ProbeResult, fit_probe, grouped_split
from lensbias.probes.pair import ProbeConfig, ProbePair
from lensbias.probes.report import ProbeReport

__all__ = ["LinearProbe", "ProbeConfig", "ProbePair", "ProbeReport", "ProbeResult", "fit_probe",
           "grouped_split"]
