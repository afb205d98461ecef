"""Probes: linear read-outs of concepts from cached activations, and their survival A → B."""

from lensbias.probes.fast import LinearProbe
from lensbias.probes.linear import ProbeResult, fit_probe, grouped_split
from lensbias.probes.pair import ProbeConfig, ProbePair
from lensbias.probes.report import ProbeReport
from lensbias.probes.transfer import (ProbeScore, TrainedProbe, labels_by_name, score_probe,
                                      train_probe)

__all__ = ["LinearProbe", "ProbeConfig", "ProbePair", "ProbeReport", "ProbeResult", "ProbeScore",
           "TrainedProbe", "fit_probe", "grouped_split", "labels_by_name", "score_probe",
           "train_probe"]
