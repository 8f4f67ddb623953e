"""Byzantine-robust reductions of client deltas, and the two update-chain stages that run them.

The reductions are pure functions: each takes the cohort's deltas and returns one delta, like
the weighted mean it replaces, so it serves under FedAvg and under a server optimiser alike
(the optimiser steps on it). :class:`NormBound` scales each delta before reduction;
:class:`RobustReduce` is the chain's reducing stage for ``robust.aggregator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from fedfm.config import RobustConfig
from fedfm.models.params import Params
from fedfm.privacy.clipping import clip_update
from fedfm.strategies.aggregate import gram, weighted_average
from fedfm.update.stage import Aggregate, Cohort, Info, Stage


def _stack(deltas: Sequence[Params], name: str) -> torch.Tensor:
    return torch.stack([d[name].to(torch.float64) for d in deltas])


def coordinate_median(deltas: Sequence[Params]) -> Params:
    """The median of every coordinate (mean of the two middle values for an even count).

    Example:
        >>> ds = [{"w": torch.tensor([1.0, 5.0])}, {"w": torch.tensor([2.0, -9.0])},
        ...       {"w": torch.tensor([100.0, 0.0])}]
        >>> coordinate_median(ds)["w"]
        tensor([2., 0.])
    """
    n = len(deltas)
    out = {}
    for name, ref in deltas[0].items():
        ordered = _stack(deltas, name).sort(dim=0).values
        middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        out[name] = middle.to(ref.dtype)
    return out


def trimmed_mean(deltas: Sequence[Params], trim: float) -> Params:
    """The mean of every coordinate after cutting ``floor(trim * n)`` values at each end.

    Example:
        >>> ds = [{"w": torch.tensor([v])} for v in (1.0, 2.0, 3.0, 1000.0)]
        >>> trimmed_mean(ds, 0.25)["w"]
        tensor([2.5000])
    """
    if not 0 <= trim < 0.5:
        raise ValueError(f"robust.trim = {trim} must be in [0, 0.5)")
    n = len(deltas)
    cut = math.floor(trim * n)
    out = {}
    for name, ref in deltas[0].items():
        ordered = _stack(deltas, name).sort(dim=0).values
        out[name] = ordered[cut : n - cut].mean(dim=0).to(ref.dtype)
    return out


def krum_scores(deltas: Sequence[Params], byzantine: int) -> torch.Tensor:
    """Krum's score of each delta: the sum of squared distances to its ``n - f - 2`` nearest
    other deltas (Blanchard et al., 2017). Low = surrounded by many others."""
    n = len(deltas)
    neighbours = n - byzantine - 2
    if neighbours < 1:
        raise ValueError(
            f"Krum needs cohort > robust.byzantine + 2: {n} updates, byzantine = {byzantine}; "
            "lower robust.byzantine or raise the cohort size"
        )
    g = gram(deltas)
    sq = g.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    dist.fill_diagonal_(float("inf"))
    return dist.sort(dim=1).values[:, :neighbours].sum(dim=1)


def multi_krum(
    deltas: Sequence[Params], weights: Sequence[float], byzantine: int, keep: int
) -> tuple[Params, list[int]]:
    """``(weighted mean of the keep lowest-scoring deltas, their indices)``; keep = 1 is Krum.

    Example:
        >>> ds = [{"w": torch.tensor([v])} for v in (0.0, 0.1, 0.3, 9.0, 10.0)]
        >>> mean, kept = multi_krum(ds, [1, 1, 1, 1, 1], byzantine=1, keep=2)
        >>> kept  # scores: 0.01 + 0.09, 0.01 + 0.04, 0.04 + 0.09, ...
        [1, 0]
    """
    if not 1 <= keep <= len(deltas):
        raise ValueError(f"robust.keep = {keep} must be in [1, {len(deltas)}] (the cohort)")
    scores = krum_scores(deltas, byzantine)
    kept = scores.argsort(stable=True)[:keep].tolist()
    mean = weighted_average([deltas[i] for i in kept], [weights[i] for i in kept])
    return mean, kept


def bound_norms(deltas: Sequence[Params], bound: float) -> tuple[list[Params], list[float]]:
    """Each delta scaled to L2 norm <= ``bound`` (Sun et al., 2019); and the norms before."""
    pairs = [clip_update(d, bound) for d in deltas]
    return [p for p, _ in pairs], [n for _, n in pairs]


@dataclass(frozen=True)
class NormBound(Stage):
    """``robust.norm_bound``: every delta scaled to L2 norm <= ``limit`` before reduction.

    Example:
        >>> from fedfm.strategies.base import Update
        >>> us = [Update(7, {"w": torch.tensor([3.0, 4.0])}, 1)]
        >>> cohort, info = NormBound(1.0).bound(Cohort(1, 0, us, [us[0].delta]))
        >>> cohort.deltas[0]["w"], info
        (tensor([0.6000, 0.8000]), {'robust_bounded': [7]})
    """

    limit: float
    name = "norm_bound"

    def bound(self, cohort: Cohort) -> tuple[Cohort, Info]:
        deltas, norms = bound_norms(cohort.deltas, self.limit)
        ids = [u.client_id for u in cohort.updates]
        bounded = [c for c, n in zip(ids, norms, strict=True) if n > self.limit]
        return replace(cohort, deltas=deltas), {"robust_bounded": bounded}


@dataclass(frozen=True)
class RobustReduce(Stage):
    """``robust.aggregator`` = ``median``, ``trimmed_mean``, ``krum`` or ``multikrum``."""

    cfg: RobustConfig
    name = "robust"
    reduces = True

    def reduce(self, cohort: Cohort, signals: Sequence[str] | None) -> tuple[Aggregate, Info]:
        rb, deltas = self.cfg, cohort.deltas
        if signals is not None:
            raise ValueError(
                f"robust.aggregator = {rb.aggregator!r} cannot give the plain sum that "
                "privacy.noise needs; use robust.norm_bound instead"
            )
        if rb.aggregator == "median":
            return Aggregate(coordinate_median(deltas)), {}
        if rb.aggregator == "trimmed_mean":
            return Aggregate(trimmed_mean(deltas, rb.trim)), {}
        if rb.aggregator not in ("krum", "multikrum"):
            raise ValueError(f"robust.aggregator = {rb.aggregator!r} is not a robust reduction")
        f = rb.byzantine or math.floor(0.3 * len(deltas))
        f = min(f, max(0, len(deltas) - 3))  # Krum needs n > f + 2
        keep = 1 if rb.aggregator == "krum" else (rb.keep or len(deltas) - f)
        mean, kept = multi_krum(deltas, cohort.weights, f, min(keep, len(deltas)))
        info = {
            "robust_byzantine": f,
            "robust_kept": sorted(cohort.updates[i].client_id for i in kept),
        }
        return Aggregate(mean), info
