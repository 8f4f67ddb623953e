"""Secure aggregation as the update chain's reducing stage (the protocol is :mod:`.secagg`).

The server learns only the cohort's sum: the example-weighted mean of the deltas or, when a
later stage asks for the plain sum (central DP), the unweighted sum, with the signals that
stage needs (the clients' unclipped bits) riding along as extra coordinates. The simulator
runs both halves of the protocol here, one message per call of :mod:`.secagg`, so the client
half of this stage sends the delta as it is; its keys and shares are counted in
``bytes_up`` and ``bytes_down``. Dropped clients are drawn from the round's server seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedfm.config import SecAggConfig
from fedfm.update.stage import Aggregate, Cohort, Info, Stage


@dataclass(frozen=True)
class SecureSum(Stage):
    """``secagg.enabled``: the cohort's mean (or sum) through the SecAgg protocol.

    Example:
        >>> import torch
        >>> from fedfm.strategies.base import Update
        >>> us = [Update(i, {"w": torch.tensor([0.1 * i])}, 1) for i in range(3)]
        >>> stage = SecureSum(SecAggConfig(enabled=True))
        >>> aggregate, info = stage.reduce(Cohort(1, 0, us, [u.delta for u in us]), None)
        >>> round(float(aggregate.delta["w"]), 4), info["secagg_dropped"]
        (0.1, [])
    """

    cfg: SecAggConfig
    name = "secagg"
    reduces = True

    def reduce(self, cohort: Cohort, signals: Sequence[str] | None) -> tuple[Aggregate, Info]:
        # imported here: the protocol's cryptography costs ~80 ms a run that does not use it
        from fedfm.privacy.secagg import flatten, secure_weighted_mean, unflatten

        sa, updates = self.cfg, cohort.updates
        like = updates[0].delta
        vectors = {}
        for u, delta in zip(updates, cohort.deltas, strict=True):
            v = flatten(delta)
            if signals:
                v = np.append(v, [u.metrics.get(s, 0.0) for s in signals])
            vectors[u.client_id] = v
        plain = signals is not None  # a plain sum: equal weights
        weights = {u.client_id: 1.0 if plain else float(u.num_examples) for u in updates}
        rng = cohort.rng()
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
        info = {
            "secagg_dropped": result.dropped,
            "secagg_seconds": result.seconds,
            "secagg_clamped": result.clamped,
        }
        up, down = result.bytes_up, result.bytes_down
        if signals is None:
            return Aggregate(unflatten(result.mean, like), bytes_up=up, bytes_down=down), info
        total = result.mean * len(result.survivors)  # equal weights: mean * count = sum
        size = len(total) - len(signals)
        sums = {s: float(total[size + i]) for i, s in enumerate(signals)}
        summed = unflatten(total[:size], like)
        return Aggregate(summed, True, sums, bytes_up=up, bytes_down=down), info
