"""Behaviour: B's extra next-token loss against A, per stored token, and where it lands
(frequency bucket, domain, concept class), beside bits per byte on held-out text; for
encoders, embedding fidelity (``behaviour.embedding``)."""

from lensbias.behaviour.embedding import EmbeddingReport, compare_embeddings
from lensbias.behaviour.loss import (BehaviourReport, LossStats, behaviour_report,
                                     compare_behaviour, token_losses)

__all__ = ["BehaviourReport", "EmbeddingReport", "LossStats", "behaviour_report",
           "compare_behaviour", "compare_embeddings", "token_losses"]
