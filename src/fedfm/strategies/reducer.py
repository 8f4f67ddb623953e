"""The server half between decoded updates and a strategy's step.

    unmask (secure aggregation) → norm bound → robust reduction → mean → central noise

A strategy calls ``self.reduce(round_, updates)`` where FedAvg would take the example-weighted
mean of the deltas; with nothing configured that is exactly what it gets. What a reduction
learns on the way (the updates Krum kept, the clip norm, the secure-aggregation cost) is in
``info`` after each call, for the round's record.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedfm.config import RunConfig
from fedfm.models.params import Params
from fedfm.privacy.client_dp import UNCLIPPED, ClientDP
from fedfm.privacy.secagg import flatten, secure_weighted_mean, unflatten
from fedfm.strategies import robust
from fedfm.strategies.aggregate import weighted_average
from fedfm.strategies.base import Update

REDUCE_STREAM = 2**21  # seed stream of the server's noise and dropout draws

DP_SIGNAL = f"dp/{UNCLIPPED}"  # the clip stage's signal, as it lands in Update.metrics


class Reducer:
    """Robust, private or secure reduction of a cohort's deltas, by config."""

    def __init__(self, cfg: RunConfig, *, dp: ClientDP | None = None) -> None:
        self.cfg = cfg
        self.dp = dp
        self.info: dict[str, Any] = {}
        self.extra_bytes = (0, 0)  # (up, down) the last reduction's protocol cost

    def _generator(self, round_: int) -> torch.Generator:
        seed = int(np.random.default_rng([self.cfg.seed, round_, REDUCE_STREAM]).integers(2**31))
        return torch.Generator().manual_seed(seed)

    def __call__(self, round_: int, updates: list[Update]) -> Params:
        self.info, self.extra_bytes = {}, (0, 0)
        deltas = [u.delta for u in updates]
        weights = [float(u.num_examples) for u in updates]
        if self.cfg.secagg.enabled:  # the server sees no single update: nothing to bound
            return self._secure(round_, updates)
        rb = self.cfg.robust
        if rb.norm_bound > 0:
            deltas, norms = robust.bound_norms(deltas, rb.norm_bound)
            self.info["robust_bounded"] = [
                u.client_id for u, n in zip(updates, norms, strict=True) if n > rb.norm_bound
            ]
        if self.dp is not None:
            total = {k: torch.stack([d[k] for d in deltas]).sum(dim=0) for k in deltas[0]}
            unclipped = sum(u.metrics.get(DP_SIGNAL, 0.0) for u in updates)
            mean, info = self.dp.noised_mean(total, unclipped, self._generator(round_))
            self.info.update(info)
            return mean
        if rb.aggregator == "median":
            return robust.coordinate_median(deltas)
        if rb.aggregator == "trimmed_mean":
            return robust.trimmed_mean(deltas, rb.trim)
        if rb.aggregator in ("krum", "multikrum"):
            f = rb.byzantine or math.floor(0.3 * len(deltas))
            f = min(f, max(0, len(deltas) - 3))  # Krum needs n > f + 2
            keep = 1 if rb.aggregator == "krum" else (rb.keep or len(deltas) - f)
            self.info["robust_byzantine"] = f
            mean, kept = robust.multi_krum(deltas, weights, f, min(keep, len(deltas)))
            self.info["robust_kept"] = sorted(updates[i].client_id for i in kept)
            return mean
        return weighted_average(deltas, weights)

    def _secure(self, round_: int, updates: list[Update]) -> Params:
        """The (weighted, or under DP plain) sum through the SecAgg protocol; the clients'
        DP bits ride along as one more coordinate."""
        sa = self.cfg.secagg
        like = updates[0].delta
        vectors = {}
        for u in updates:
            v = flatten(u.delta)
            if self.dp is not None:
                v = np.append(v, u.metrics.get(DP_SIGNAL, 0.0))
            vectors[u.client_id] = v
        weights = {
            u.client_id: 1.0 if self.dp is not None else float(u.num_examples) for u in updates
        }
        rng = np.random.default_rng([self.cfg.seed, round_, REDUCE_STREAM])
        n_drop = math.floor(sa.dropout * len(updates))
        drop = {int(c) for c in rng.choice(sorted(vectors), size=n_drop, replace=False)}
        result = secure_weighted_mean(
            vectors,
            weights,
            clip=sa.clip,
            threshold=sa.threshold,
            drop=drop,
            seed=int(rng.integers(2**31)),
        )
        self.extra_bytes = (result.bytes_up, result.bytes_down)
        self.info.update(
            {
                "secagg_dropped": result.dropped,
                "secagg_seconds": result.seconds,
                "secagg_clamped": result.clamped,
            }
        )
        if self.dp is None:
            return unflatten(result.mean, like)
        total_vec = result.mean * len(result.survivors)  # equal weights: mean * count = sum
        total = unflatten(total_vec[:-1], like)
        mean, info = self.dp.noised_mean(total, float(total_vec[-1]), self._generator(round_))
        self.info.update(info)
        return mean
