"""The Gaussian mechanism on params dicts."""

from __future__ import annotations

import torch

from fedfm.models.params import Params


def add_gaussian_noise(params: Params, std: float, generator: torch.Generator) -> Params:
    """``params + N(0, std^2)`` per coordinate (drawn in float32 on the CPU, seeded).

    Example:
        >>> out = add_gaussian_noise({"w": torch.zeros(3)}, 0.0, torch.Generator())
        >>> out["w"]
        tensor([0., 0., 0.])
    """
    if std < 0:
        raise ValueError(f"noise stddev must be >= 0, got {std}")
    if std == 0:
        return dict(params)
    out = {}
    for name, value in params.items():
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float32) * std
        out[name] = value + noise.to(value.device, value.dtype)
    return out
