"""Geometry: how compression reshapes the representation space (anisotropy, IsoScore,
effective rank, Compression Hacking spectra) and how far B's layers still match A's (CKA)."""

from lensbias.geometry.compare import (GeometryConfig, GeometryReport, GeometryRow, CkaRow,
                                       compare_geometry, track_losses)
from lensbias.geometry.metrics import (CrossMoments, Moments, SampleMeans, anisotropy,
                                       anisotropy_zscored, effective_rank, isoscore,
                                       linear_cka, matrix_entropy, pooled_compression_metrics,
                                       sample_compression_metrics, top_dim_variance_share,
                                       twonn_dimension)

__all__ = ["CkaRow", "CrossMoments", "GeometryConfig", "GeometryReport", "GeometryRow",
           "Moments", "SampleMeans", "anisotropy", "anisotropy_zscored", "compare_geometry",
           "effective_rank", "isoscore", "linear_cka", "matrix_entropy",
           "pooled_compression_metrics", "sample_compression_metrics",
           "top_dim_variance_share", "track_losses", "twonn_dimension"]
