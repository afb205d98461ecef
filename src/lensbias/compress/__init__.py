"""Compress: produce compressed copies of a model, with the compressor's data recorded.

Importing this package registers every method (``METHODS``).
"""

from lensbias.compress import (  # noqa: F401 (registration)
    awq, distill, gptq, layerdrop, lowrank, magnitude, quant, sparsegpt, wanda)
from lensbias.compress.base import METHODS, Compressed, Recipe, compress
from lensbias.compress.calib import CalibConfig
from lensbias.compress.linear import Targets

__all__ = ["METHODS", "CalibConfig", "Compressed", "Recipe", "Targets", "compress"]
