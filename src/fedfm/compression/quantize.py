"""b-bit quantisation with stochastic rounding (QSGD-style, per tensor), packed into bytes.

Each tensor ``x`` is mapped onto ``2^b`` evenly spaced levels between its min and max and
rounded up or down at random with the probabilities that make the result unbiased
(``E[dequantize(quantize(x))] = x``). The error of every element is below one step,
``(max - min) / (2^b - 1)``. Codes are packed ``8 // b`` to a byte, so a float32 tensor
shrinks about ``32 / b`` times; the wire form is a params dict (the codes as ``uint8`` plus
the two range endpoints in float32), whose serialised size is exactly what travels.
"""

from __future__ import annotations

import math

import torch

from fedfm.models.params import Params

BITS = (1, 2, 4, 8)  # widths that pack evenly into bytes
_CODES, _RANGE = ".__q", ".__range"


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits = {bits} is not supported; use one of {BITS}")


def quantize(
    x: torch.Tensor, bits: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed uint8 codes, float32 [min, max])`` of ``x`` with stochastic rounding."""
    _check_bits(bits)
    flat = x.detach().reshape(-1).to(torch.float32)
    lo, hi = (flat.min(), flat.max()) if flat.numel() else (torch.tensor(0.0), torch.tensor(0.0))
    levels = 2**bits - 1
    step = (hi - lo) / levels
    if float(step) > 0:
        scaled = (flat - lo) / step
        noise = torch.rand(scaled.shape, generator=generator, dtype=torch.float32)
        codes = torch.floor(scaled + noise).clamp_(0, levels).to(torch.uint8)
    else:  # a constant tensor is exact with code 0
        codes = torch.zeros(flat.numel(), dtype=torch.uint8)
    return _pack(codes, bits), torch.stack([lo, hi]).to(torch.float32)


def dequantize(
    packed: torch.Tensor, value_range: torch.Tensor, bits: int, like: torch.Tensor
) -> torch.Tensor:
    """The tensor that ``quantize`` encoded, in ``like``'s shape and dtype."""
    _check_bits(bits)
    codes = _unpack(packed, bits, like.numel()).to(torch.float32)
    lo, hi = float(value_range[0]), float(value_range[1])
    step = (hi - lo) / (2**bits - 1)
    return (lo + codes * step).reshape(like.shape).to(like.dtype)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    per_byte = 8 // bits
    if per_byte == 1:
        return codes
    padded = torch.zeros(math.ceil(codes.numel() / per_byte) * per_byte, dtype=torch.uint8)
    padded[: codes.numel()] = codes
    groups = padded.reshape(-1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (groups << shifts).sum(dim=1).to(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    per_byte = 8 // bits
    if per_byte == 1:
        return packed[:numel]
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)


def quantize_params(params: Params, bits: int, generator: torch.Generator) -> Params:
    """The wire form of ``params``: per tensor, its packed codes and its range."""
    wire: Params = {}
    for name, x in params.items():
        wire[name + _CODES], wire[name + _RANGE] = quantize(x, bits, generator)
    return wire


def dequantize_params(wire: Params, bits: int, like: Params) -> Params:
    """Params in ``like``'s names, shapes and dtypes, from their wire form."""
    return {
        name: dequantize(wire[name + _CODES], wire[name + _RANGE], bits, ref)
        for name, ref in like.items()
    }
