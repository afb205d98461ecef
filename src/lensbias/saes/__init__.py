"""SAEs: train sparse autoencoders on cached activations (through sae-lens) and measure
which of model A's SAE features survive in a compressed model B (frozen-SAE survival)."""

from lensbias.saes.report import FeatureRow, SAEReport
from lensbias.saes.survival import FeatureSurvival, SurvivalThresholds, match_features
from lensbias.saes.train import SAEConfig, load_sae, read_info, sae_quality, train_sae

__all__ = ["FeatureRow", "FeatureSurvival", "SAEConfig", "SAEReport", "SurvivalThresholds",
           "load_sae", "match_features", "read_info", "sae_quality", "train_sae"]
