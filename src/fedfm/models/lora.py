"""LoRA factor algebra on params: find the (A, B) pairs, and aggregate them exactly.

A LoRA module adds ``scale * B @ A`` to a frozen weight (``A``: ``r x in``, ``B``: ``out x r``).
Averaging A and B separately (FedIT) gives ``mean(B) @ mean(A)``, which is *not* the mean of
the client products ``mean(B_i @ A_i)``. Stacking (FLoRA, Wang et al., NeurIPS 2024) is exact:

    B_stack = [w_1 B_1 | ... | w_k B_k]   (out x sum r_i)
    A_stack = [A_1; ...; A_k]             (sum r_i x in)
    B_stack @ A_stack = sum_i w_i B_i @ A_i

and a truncated SVD brings the exact mean product back to a fixed rank (FlexLoRA, Bai et
al., NeurIPS 2024), ordering the rank components by singular value, so that the first
``r`` components are the best rank-``r`` approximation for any ``r``.

All functions here are pure and work on any params dict that uses peft's names
(``...query.lora_A.default.weight`` / ``...query.lora_B.default.weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedfm.models.params import Params

_A, _B = ".lora_A.", ".lora_B."


@dataclass(frozen=True)
class LoraPair:
    """One LoRA module's factor names inside a params dict.

    Attributes:
        module: the adapted module's name (``...attention.self.query``).
        a: the name of its ``A`` (``r x in``).
        b: the name of its ``B`` (``out x r``).
    """

    module: str
    a: str
    b: str

    @property
    def base_weight(self) -> str:
        """The frozen weight this pair adds to (peft keeps it as ``base_layer.weight``)."""
        return f"{self.module}.base_layer.weight"


def lora_pairs(names: Sequence[str] | Params) -> list[LoraPair]:
    """Every LoRA module's (A, B) names, in a stable order.

    Raises:
        ValueError: an ``A`` without its ``B`` (or the reverse): not a whole LoRA adapter.

    Example:
        >>> lora_pairs(["m.q.lora_A.default.weight", "m.q.lora_B.default.weight", "head.w"])
        [LoraPair(module='m.q', a='m.q.lora_A.default.weight', b='m.q.lora_B.default.weight')]
    """
    a_names = {n.split(_A)[0]: n for n in names if _A in n}
    b_names = {n.split(_B)[0]: n for n in names if _B in n}
    if set(a_names) != set(b_names):
        lonely = sorted(set(a_names) ^ set(b_names))
        raise ValueError(f"LoRA modules with only one of A and B: {lonely[:3]}")
    return [LoraPair(m, a_names[m], b_names[m]) for m in sorted(a_names)]


def is_lora(name: str) -> bool:
    return _A in name or _B in name


def stack(
    a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """FLoRA stacking: ``(A_stack, B_stack)`` with ``B_stack @ A_stack = sum w_i B_i A_i``.

    Weights are normalised to sum to 1; ranks may differ between clients.

    Example:
        >>> a = [torch.ones(1, 2), 2 * torch.ones(2, 2)]
        >>> b = [torch.ones(3, 1), torch.ones(3, 2)]
        >>> A, B = stack(a, b, [1, 3])
        >>> tuple(A.shape), tuple(B.shape)
        ((3, 2), (3, 3))
    """
    if not a or len(a) != len(b) or len(a) != len(weights):
        raise ValueError(
            f"stack needs k A's, k B's and k weights; got {len(a)}, {len(b)}, {len(weights)}"
        )
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to > 0, got {list(weights)}")
    a_stack = torch.cat([x.to(torch.float64) for x in a], dim=0)
    b_stack = torch.cat(
        [y.to(torch.float64) * (w / total) for y, w in zip(b, weights, strict=True)], dim=1
    )
    return a_stack, b_stack


def mean_product(
    a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """The exact weighted mean of client products ``sum w_i B_i A_i`` (float64)."""
    a_stack, b_stack = stack(a, b, weights)
    return b_stack @ a_stack


def factorize(product: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``(A, B)`` of ``product`` (truncated SVD, Eckart-Young).

    ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``: the singular values are split evenly, so A
    and B have the same scale, and component ``j`` carries the ``j``-th largest singular
    value (truncating to the first ``r' < r`` components is again the best rank-``r'`` fit).
    Ranks above ``min(out, in)`` are zero-padded.

    Example:
        >>> p = torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0, 1.0]))
        >>> A, B = factorize(p, 1)
        >>> torch.allclose(B @ A, p.double())
        True
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(product.to(torch.float64), full_matrices=False)
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    a = torch.zeros(rank, product.shape[1], dtype=torch.float64)
    b = torch.zeros(product.shape[0], rank, dtype=torch.float64)
    a[:keep] = root[:, None] * vh[:keep]
    b[:, :keep] = u[:, :keep] * root[None, :]
    return a, b


def truncate_rank(params: Params, rank: int) -> Params:
    """Zero every LoRA component at index ``>= rank`` (A's rows, B's columns).

    A client of rank ``r`` inside a model of rank ``R >= r``: components that start at zero in
    both A and B get no gradient (``dL/dB_j = g A_j x = 0``, ``dL/dA_j = B_j^T g = 0``) and,
    with Adam or SGD and no weight decay, stay zero, so the client trains exactly a rank-``r``
    adapter (HetLoRA's truncation; the zero padding is implicit).
    """
    out = dict(params)
    for pair in lora_pairs(list(params)):
        a, b = params[pair.a].clone(), params[pair.b].clone()
        a[rank:] = 0
        b[:, rank:] = 0
        out[pair.a], out[pair.b] = a, b
    return out


def rank_of(params: Params) -> int:
    """The adapter's rank (rows of an A, or columns of a B), 0 when there is no LoRA."""
    for name, t in params.items():
        if _A in name:
            return t.shape[0]
        if _B in name:  # A frozen (FFA-LoRA): B's columns
            return t.shape[1]
    return 0


def lora_bytes_at_rank(params: Params, rank: int) -> Params:
    """The part of ``params`` a rank-``rank`` client really sends: its first ``rank`` components
    of every A and B (and every non-LoRA tensor whole)."""
    out = {k: v for k, v in params.items() if not is_lora(k)}
    for pair in lora_pairs(list(params)):
        out[pair.a] = params[pair.a][:rank]
        out[pair.b] = params[pair.b][:, :rank]
    return out


def pad_rank(cut: Params, like: Params) -> Params:
    """Undo :func:`lora_bytes_at_rank`: zero-pad a low-rank client's A rows and B columns to
    ``like``'s shapes (HetLoRA's zero padding)."""
    out = dict(cut)
    for pair in lora_pairs(list(like)):
        a, b = torch.zeros_like(like[pair.a]), torch.zeros_like(like[pair.b])
        rank = cut[pair.a].shape[0]
        a[:rank], b[:, :rank] = cut[pair.a], cut[pair.b]
        out[pair.a], out[pair.b] = a, b
    return out
