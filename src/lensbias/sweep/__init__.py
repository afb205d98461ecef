"""Sweeps: a grid of compress + diff runs (models × methods × levels × calibration domains ×
seeds) into one resumable results table, and its analysis.

``load_sweep_config`` / ``cells`` (the grid), ``run_sweep`` / ``read_results`` (running it),
``analyse`` (calibration × concept domain interaction, phase curves, anisotropy vs loss).
``lensbias sweep CONFIG`` is the command-line front end.
"""

from lensbias.sweep.analysis import analyse, anisotropy_vs_loss, interaction, phase_curves
from lensbias.sweep.config import Cell, MethodSpec, SweepConfig, cells, load_sweep_config
from lensbias.sweep.run import read_results, run_sweep

__all__ = ["Cell", "MethodSpec", "SweepConfig", "analyse", "anisotropy_vs_loss", "cells",
           "interaction", "load_sweep_config", "phase_curves", "read_results", "run_sweep"]
