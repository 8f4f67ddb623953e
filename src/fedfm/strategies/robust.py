"""Byzantine-robust reductions of client deltas: pure functions, no state.

Each takes the cohort's deltas and returns one delta, like the weighted mean it replaces, so
it serves under FedAvg and under a server optimiser alike (the optimiser steps on it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedfm.models.params import Params
from fedfm.privacy.clipping import clip_update
from fedfm.strategies.aggregate import gram, weighted_average


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
        >>> ds = [{"w": torch.tensor([v])} for v in (0.0, 0.1, 0.2, 9.0)]
        >>> mean, kept = multi_krum(ds, [1, 1, 1, 1], byzantine=1, keep=2)
        >>> kept
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
