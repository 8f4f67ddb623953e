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


def mismatches(delta: Params, like: Params) -> list[str]:
    """Why ``delta`` cannot be added to ``like``: missing or unknown names, wrong shapes or
    dtypes (empty when it fits).

    Example:
        >>> mismatches({"w": torch.zeros(2)}, {"w": torch.zeros(3), "b": torch.zeros(1)})
        ['missing b', 'w: shape (2,) != (3,)']
    """
    problems = [f"missing {k}" for k in like if k not in delta]
    problems += [f"unknown {k}" for k in delta if k not in like]
    for k in delta.keys() & like.keys():
        got, want = delta[k], like[k]
        if got.shape != want.shape:
            problems.append(f"{k}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"{k}: dtype {got.dtype} != {want.dtype}")
    return sorted(problems, key=lambda p: (not p.startswith("missing"), p))


def gram(deltas: Sequence[Params]) -> torch.Tensor:
    """The ``k x k`` matrix of inner products between ``k`` params dicts, in float64.

    Accumulated tensor by tensor, so no dict is ever flattened into one long vector.
    """
    k = len(deltas)
    g = torch.zeros(k, k, dtype=torch.float64)
    for name in deltas[0]:
        block = torch.stack([d[name].reshape(-1).to(torch.float64) for d in deltas])
        g += block @ block.T
    return g


def mean_pairwise_cosine(deltas: Sequence[Params]) -> float:
    """Mean cosine similarity over all pairs of client updates (client drift: 1 = aligned).

    Example:
        >>> a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}
        >>> mean_pairwise_cosine([a, a, b])  # pairs: (a,a)=1, (a,b)=0, (a,b)=0
        0.3333333333333333
    """
    if len(deltas) < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least 2 updates, got {len(deltas)}")
    g = gram(deltas)
    norms = g.diagonal().sqrt().clamp_min(1e-30)
    cos = g / norms[:, None] / norms[None, :]
    iu = torch.triu_indices(len(deltas), len(deltas), offset=1)
    return float(cos[iu[0], iu[1]].mean())
