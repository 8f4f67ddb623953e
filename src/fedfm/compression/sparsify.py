"""Top-k sparsification: keep each tensor's ``k`` largest-magnitude entries.

The wire form of a tensor is its kept values (in their dtype) and their flat positions
(int32), so its serialised size is exact; the rest are zero at the server. Used with error
feedback (Stich et al., 2018; Karimireddy et al., 2019), what is not sent is carried to the
client's next update instead of being lost (see :mod:`fedfm.update.compress`).
"""

from __future__ import annotations

import math

import torch

from fedfm.models.params import Params

_VALUES, _INDICES = ".__values", ".__indices"


def kept(numel: int, fraction: float) -> int:
    """How many entries top-k keeps of ``numel`` (at least one of a non-empty tensor)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
    return min(numel, max(1, math.ceil(fraction * numel))) if numel else 0


def topk(x: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, int32 flat indices)`` of the ``ceil(fraction * numel)`` largest ``|x|``."""
    flat = x.detach().reshape(-1)
    k = kept(flat.numel(), fraction)
    index = torch.topk(flat.abs(), k, sorted=False).indices
    index = index.sort().values  # deterministic order on the wire
    return flat[index].clone(), index.to(torch.int32)


def densify(values: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(like.numel(), dtype=like.dtype)
    out[index.to(torch.int64)] = values.to(like.dtype)
    return out.reshape(like.shape)


def sparsify_params(params: Params, fraction: float) -> Params:
    wire: Params = {}
    for name, x in params.items():
        wire[name + _VALUES], wire[name + _INDICES] = topk(x, fraction)
    return wire


def densify_params(wire: Params, like: Params) -> Params:
    return {
        name: densify(wire[name + _VALUES], wire[name + _INDICES], ref)
        for name, ref in like.items()
    }
