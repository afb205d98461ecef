"""SAEs: train sparse autoencoders on cached activations (through sae-lens) and measure
which of model A's SAE features survive in a compressed model B (frozen-SAE survival):
stable features (a second seed), quality gates on held-out documents, three readings
(readout, aligned readout, information), predictability and cross-compression overlap."""

from lensbias.saes.analysis import survival_predictability
from lensbias.saes.overlap import damage_overlap
from lensbias.saes.report import FeatureRow, SAEReport
from lensbias.saes.survival import (FeatureSurvival, QualityGate, SurvivalThresholds,
                                    fit_alignment, match_features)
from lensbias.saes.train import (SAEConfig, heldout_rows, load_sae, read_info, sae_quality,
                                 train_sae)

__all__ = ["FeatureRow", "FeatureSurvival", "QualityGate", "SAEConfig", "SAEReport",
           "SurvivalThresholds", "damage_overlap", "fit_alignment", "heldout_rows", "load_sae",
           "match_features", "read_info", "sae_quality", "survival_predictability",
           "train_sae"]
