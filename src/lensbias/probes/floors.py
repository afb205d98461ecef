"""Probes, stage 2b: the floors a probe accuracy is read against.

A probe accuracy says little alone: a concept may be readable from the token's identity,
with no context at all. Every probe row carries three floors, all learned on exactly the
probe's own training tokens and scored on its test tokens:

- ``majority``: always answer the most frequent training class;
- ``token_id``: ``TokenIdLookup``, the most frequent training label of each token id
  (ids never seen in training get the majority class): what a lookup table reads;
- ``embed``: the same probe fitted on the model's context-free embedding stream
  (``blocks.0.hook_resid_pre``: token + positional embedding, before any attention).

``floor = max(majority, token_id, embed)``; ``context_gain = acc_a - floor``. A concept ×
hook whose context gain's lower interval bound is ≤ 0 is readable from token identity
(and position) alone and is reported as such (``kind = "token identity"``), never mixed
into the contextual concepts. Written by hand: no library ships a per-id lookup baseline.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Int

from lensbias.errors import LensbiasError

EMBED_HOOK = "blocks.0.hook_resid_pre"
"""The context-free stream the ``embed`` floor is probed on."""
KIND_TOKEN = "token identity"
KIND_CONTEXT = "contextual"


class TokenIdLookup:
    """Most frequent training label per token id; unseen ids answer the majority class.

    Ties between labels of one id go to the smaller label index (deterministic).
    """

    def fit(self, ids: Int[np.ndarray, " tokens"], y: Int[np.ndarray, " tokens"]
            ) -> TokenIdLookup:
        ids, y = np.asarray(ids, np.int64), np.asarray(y, np.int64)
        if ids.shape != y.shape or ids.ndim != 1 or len(ids) == 0:
            raise LensbiasError(f"TokenIdLookup.fit needs ids [n] and y [n], n > 0; got "
                                f"{ids.shape} and {y.shape}")
        values, counts = np.unique(y, return_counts=True)
        self.majority_ = int(values[np.argmax(counts)])
        # count (id, label) pairs; per id keep the most frequent label (smallest on ties)
        pairs, pair_counts = np.unique(np.stack([ids, y], axis=1), axis=0, return_counts=True)
        order = np.lexsort((pairs[:, 1], -pair_counts, pairs[:, 0]))
        pairs = pairs[order]
        first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
        self.ids_ = pairs[first, 0]
        self.labels_ = pairs[first, 1]
        return self

    def predict(self, ids: Int[np.ndarray, " tokens"]) -> Int[np.ndarray, " tokens"]:
        if not hasattr(self, "ids_"):
            raise LensbiasError("this TokenIdLookup is not fitted yet; call fit")
        ids = np.asarray(ids, np.int64)
        at = np.clip(np.searchsorted(self.ids_, ids), 0, len(self.ids_) - 1)
        seen = self.ids_[at] == ids
        return np.where(seen, self.labels_[at], self.majority_)

    def score(self, ids: Int[np.ndarray, " tokens"], y: Int[np.ndarray, " tokens"]) -> float:
        return float(np.mean(self.predict(ids) == np.asarray(y)))


def kind_of(context_gain_ci: tuple[float, float]) -> str:
    """``token identity`` when the context gain's lower bound is ≤ 0 (or undefined)."""
    low = context_gain_ci[0]
    return KIND_CONTEXT if low == low and low > 0 else KIND_TOKEN
