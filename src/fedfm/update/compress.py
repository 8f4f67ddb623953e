"""Compression as an update-chain stage, with optional error feedback.

With error feedback the client compresses ``delta + e`` and keeps ``e' = (delta + e) -
decompressed`` for its next upload, so what compression drops is delayed, not lost (EF-SGD,
Karimireddy et al., 2019). Without it, quantisation is still unbiased but top-k is not.
"""

from __future__ import annotations

import torch

from fedfm.compression.quantize import dequantize_params, quantize_params
from fedfm.compression.sparsify import densify_params, sparsify_params
from fedfm.config import CompressionConfig
from fedfm.models.params import Params
from fedfm.update.stage import Stage

RESIDUAL = "residual"


class Compress(Stage):
    """``compression.method`` = ``quantize`` (``bits``) or ``topk`` (``fraction``).

    Example:
        >>> stage = Compress(CompressionConfig(method="topk", fraction=0.5))
        >>> wire, state = stage.encode({"w": torch.tensor([3.0, -1.0])}, {}, torch.Generator())
        >>> stage.decode(wire, {"w": torch.zeros(2)})["w"], state["residual.w"]
        (tensor([3., 0.]), tensor([ 0., -1.]))
    """

    name = "compress"
    encodes = True

    def __init__(self, cfg: CompressionConfig) -> None:
        if cfg.method not in ("quantize", "topk"):
            raise ValueError(f"compression.method = {cfg.method!r} is not a compressor")
        self.cfg = cfg

    def encode(
        self, delta: Params, state: Params, generator: torch.Generator
    ) -> tuple[Params, Params]:
        target = delta
        if self.cfg.error_feedback and state:
            target = {k: v + state[f"{RESIDUAL}.{k}"].to(v.dtype) for k, v in delta.items()}
        if self.cfg.method == "quantize":
            wire = quantize_params(target, self.cfg.bits, generator)
        else:
            wire = sparsify_params(target, self.cfg.fraction)
        if not self.cfg.error_feedback:
            return wire, {}
        sent = self.decode(wire, target)
        return wire, {f"{RESIDUAL}.{k}": target[k] - sent[k] for k in target}

    def decode(self, wire: Params, like: Params) -> Params:
        if self.cfg.method == "quantize":
            return dequantize_params(wire, self.cfg.bits, like)
        return densify_params(wire, like)
