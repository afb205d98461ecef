"""Sweeps: a grid of compress + diff runs (models × methods × levels × calibration domains ×
seeds) into one resumable results table, and its analysis.

``load_sweep_config`` / ``cells`` (the grid), ``run_sweep`` / ``read_results`` (running it),
``analyse`` (calibration × concept domain interaction, phase curves, anisotropy vs loss,
the original models' training-data view), ``read_table`` (the finished rows as written to
``results.h5``).
``lensbias sweep CONFIG`` is the command-line front end.
"""

from lensbias.sweep.analysis import analyse, anisotropy_vs_loss, interaction, phase_curves
from lensbias.sweep.config import Cell, MethodSpec, SweepConfig, cells, load_sweep_config
from lensbias.sweep.run import read_results, run_sweep
from lensbias.sweep.table import read_table, write_table

__all__ = ["Cell", "MethodSpec", "SweepConfig", "analyse", "anisotropy_vs_loss", "cells",
           "interaction", "load_sweep_config", "phase_curves", "read_results", "read_table",
           "run_sweep", "write_table"]
