"""Pure reductions over params: weighted means, deltas, finiteness. No state, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fedfm.models.params import Params

GRAM_BLOCK = 2**22
"""Float64 elements (32 MiB) of the largest block :func:`gram` and :func:`weighted_average`
flatten at once; a single tensor larger than that is a block of its own."""


def weighted_average(params: Sequence[Params], weights: Sequence[float]) -> Params:
    """``sum_i w_i p_i / sum_i w_i`` per tensor, computed in float64 then cast back.

    Each tensor's updates are stacked into one ``(k, n)`` float64 block and weighted by one
    vector-matrix product (a few operations per tensor instead of three per update: the
    round's aggregation is on the simulator's hot path); a tensor whose block would exceed
    :data:`GRAM_BLOCK` elements is accumulated one update at a time instead, in the same
    order (``acc += w_i / W * p_i``), so memory stays at one float64 copy of it.

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
    k, scaled = len(params), [w / total for w in weights]
    vector: torch.Tensor | None = None
    out = {}
    for name, ref in params[0].items():
        if k * ref.numel() <= GRAM_BLOCK:
            if vector is None or vector.device != ref.device:
                vector = torch.tensor(scaled, dtype=torch.float64, device=ref.device)
            block = torch.stack([p[name] for p in params]).reshape(k, -1).to(torch.float64)
            out[name] = (vector @ block).reshape(ref.shape).to(ref.dtype)
            continue
        acc = torch.zeros_like(ref, dtype=torch.float64)
        for p, w in zip(params, scaled, strict=True):
            acc += p[name].to(torch.float64) * w
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

    One sum per tensor in the common, all-finite case (a NaN or Inf makes its tensor's sum
    NaN or Inf); only when a sum is not finite (a NaN or Inf, or finite values whose sum
    overflows) are the tensors checked element by element to name the culprits.
    """
    if all(math.isfinite(float(v.sum())) for v in params.values()):
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

    The tensors are flattened side by side into ``(k, columns)`` blocks of at most
    :data:`GRAM_BLOCK` elements, one matrix product per block: a few large operations
    rather than several per tensor (small tensors), and never one vector of a whole large
    model.
    """
    k = len(deltas)
    g: torch.Tensor | None = None
    for names in _blocks(deltas[0], max(1, GRAM_BLOCK // max(k, 1))):
        block = _flattened(deltas, names)
        g = block @ block.T if g is None else g + block @ block.T
    return torch.zeros(k, k, dtype=torch.float64) if g is None else g


def _flattened(deltas: Sequence[Params], names: Sequence[str]) -> torch.Tensor:
    """The ``(k, n)`` float64 matrix whose row ``i`` is ``deltas[i]``'s tensors ``names``,
    flattened side by side."""
    k = len(deltas)
    return torch.cat(
        [torch.stack([d[name] for d in deltas]).reshape(k, -1) for name in names], dim=1
    ).to(torch.float64)


def _blocks(params: Params, columns: int) -> list[list[str]]:
    """``params``' names in order, grouped into runs of at most ``columns`` elements."""
    blocks: list[list[str]] = []
    size = 0
    for name, value in params.items():
        if not blocks or size + value.numel() > columns:
            blocks.append([])
            size = 0
        blocks[-1].append(name)
        size += value.numel()
    return blocks


EXACT_STATISTICS = 2**16
"""Elements (over all updates) up to which :func:`update_statistics` takes them as one
float64 block; above, one streamed float32 pass (a float64 copy of a 5M-parameter cohort of
10 is 400 MB; the pass costs about 20 ms a round on one core)."""


def update_statistics(deltas: Sequence[Params]) -> tuple[list[float], float | None]:
    """Each update's L2 norm and, for two or more, their mean pairwise cosine (else
    ``None``): the round record's drift statistics.

    Both come from the norms and ``s = sum_i u_i / |u_i|``, since the cosines over all
    ordered pairs sum to ``|s|^2 - m`` (``m`` the non-zero updates; a zero update's cosines
    are 0, as in the Gram): two passes over the updates, where a Gram takes ``k``. A small
    cohort of small updates is flattened side by side into one ``(k, n)`` float64 block
    (exact to float64 rounding); a larger one streams, in float32 with float64 totals per
    tensor: its norms agree with the exact ones to about 1e-4 relative, its mean cosine to
    about 1e-5. An update holding NaN or Inf has a NaN or Inf norm (and then the cosine is
    not finite either).

    Example:
        >>> a, b = {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.0, 2.0])}
        >>> norms, cosine = update_statistics([a, b])
        >>> norms, round(cosine, 6)
        ([5.0, 2.0], 0.8)
    """
    k = len(deltas)
    if not deltas[0]:  # nothing trainable travels
        return [0.0] * k, 0.0 if k >= 2 else None
    if k * sum(v.numel() for v in deltas[0].values()) <= EXACT_STATISTICS:
        block = _flattened(deltas, list(deltas[0]))
        norms = torch.linalg.vector_norm(block, dim=1).tolist()
        if k < 2:
            return norms, None
        units = [1.0 / n if n > 0.0 else 0.0 for n in norms]
        s = torch.tensor(units, dtype=torch.float64, device=block.device) @ block
        return norms, (float(s @ s) - sum(n > 0.0 for n in norms)) / (k * (k - 1))
    norms = [math.sqrt(_squared_norm(list(d.values()))) for d in deltas]
    if k < 2:
        return norms, None
    total: list[torch.Tensor] | None = None
    for delta, norm in zip(deltas, norms, strict=True):
        if norm == 0.0:
            continue
        values = [v.float() for v in delta.values()]  # a no-op for float32
        if total is None:
            total = list(torch._foreach_div(values, norm))
        else:
            torch._foreach_add_(total, values, alpha=1.0 / norm)
    if total is None:
        return norms, 0.0
    nonzero = sum(norm > 0.0 for norm in norms)
    return norms, (_squared_norm(total) - nonzero) / (k * (k - 1))


def _squared_norm(tensors: list[torch.Tensor]) -> float:
    """``sum |t|^2`` over ``tensors``: one float32 norm per tensor, summed in float64."""
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    return float(torch.stack(norms).double().square().sum())


def mean_pairwise_cosine(deltas: Sequence[Params]) -> float:
    """Mean cosine similarity over all pairs of client updates (client drift: 1 = aligned).

    Example:
        >>> a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}
        >>> mean_pairwise_cosine([a, a, b])  # pairs: (a,a)=1, (a,b)=0, (a,b)=0
        0.3333333333333333
    """
    if len(deltas) < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least 2 updates, got {len(deltas)}")
    return _mean_cosine(gram(deltas).numpy())


def _mean_cosine(g: np.ndarray) -> float:
    """The mean cosine over the pairs of a Gram matrix's vectors (off the diagonal); a zero
    vector's cosines are 0. In numpy: a few microseconds where torch's dispatch costs tens."""
    k = len(g)
    norms = np.maximum(np.sqrt(g.diagonal()), 1e-30)  # not .clip: its wrapper costs more
    cos = g / norms[:, None] / norms[None, :]
    return float((cos.sum() - cos.trace()) / (k * (k - 1)))  # each pair twice
