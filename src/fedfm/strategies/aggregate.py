"""Pure reductions over params: weighted means, deltas, finiteness. No state, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedfm.models.params import Params


def weighted_average(params: Sequence[Params], weights: Sequence[float]) -> Params:
    """``sum_i w_i p_i / sum_i w_i`` per tensor, computed in float64 then cast back.

    Example:
        >>> a, b = {"w": torch.tensor([0.0])}, {"w": torch.tensor([3.0])}
        >>> weighted_average([a, b], [1, 2])["w"]
        tensor([2.])
    """
    if not params:
        raise ValueError("weighted_average needs at least one params dict")
    if len(params) != len(weights):
        raise ValueError(f"{len(params)} params but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to > 0, got {list(weights)}")
    out = {}
    for name, ref in params[0].items():
        acc = torch.zeros_like(ref, dtype=torch.float64)
        for p, w in zip(params, weights, strict=True):
            acc += p[name].to(torch.float64) * (w / total)
        out[name] = acc.to(ref.dtype)
    return out


def subtract(a: Params, b: Params) -> Params:
    """``a - b`` per tensor."""
    return {k: a[k] - b[k] for k in a}


def add(a: Params, b: Params, scale: float = 1.0) -> Params:
    """``a + scale * b`` per tensor."""
    return {k: a[k] + scale * b[k] for k in a}


def zeros_like(params: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in params.items()}


def non_finite(params: Params) -> list[str]:
    """Names of tensors holding NaN or Inf (empty when all finite).

    One ``isfinite`` over all values at once (the common, all-finite case costs a single
    check); only when it fails are the tensors scanned one by one to name the culprits.
    """
    if not params:
        return []
    flat = torch.cat([v.reshape(-1) for v in params.values()])
    if bool(torch.isfinite(flat).all()):
        return []
    return [k for k, v in params.items() if not torch.isfinite(v).all()]
