"""L2 clipping of a whole update and the adaptive clip norm of Andrew et al. (2021).

Pure functions on params dicts: the norm is over every tensor of the update together (one
vector), which is what client-level DP bounds.
"""

from __future__ import annotations

import math

import torch

from fedfm.errors import ConfigError
from fedfm.models.params import Params


def l2_norm(params: Params) -> float:
    """The L2 norm of all tensors of ``params`` as one vector (accumulated in float64)."""
    total = sum(float(v.detach().to(torch.float64).pow(2).sum()) for v in params.values())
    return math.sqrt(total)


def clip_update(params: Params, max_norm: float) -> tuple[Params, float]:
    """``(params scaled to L2 norm <= max_norm, the norm before)``.

    Example:
        >>> clipped, norm = clip_update({"w": torch.tensor([3.0, 4.0])}, 1.0)
        >>> clipped["w"], norm
        (tensor([0.6000, 0.8000]), 5.0)
    """
    if not max_norm > 0:
        raise ValueError(f"clip norm must be > 0, got {max_norm}")
    norm = l2_norm(params)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in params.items()}, norm


def next_clip(clip: float, unclipped_fraction: float, target_quantile: float, lr: float) -> float:
    """Geometric update of the clip norm toward the ``target_quantile`` of update norms.

    ``C <- C * exp(-lr * (b - gamma))``, where ``b`` is the (noised) share of updates that
    were not clipped: too many unclipped (b > gamma) shrinks C, too few grows it.

    Example:
        >>> round(next_clip(1.0, 1.0, 0.5, 0.2), 4)  # all unclipped: shrink
        0.9048
    """
    return clip * math.exp(-lr * (unclipped_fraction - target_quantile))


def split_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """The update's noise multiplier when the unclipped count is noised too (Andrew et al.,
    Thm. 1): ``(z^-2 - (2 sigma_b)^-2)^(-1/2)``, so both releases together are as private as
    one Gaussian mechanism with multiplier ``z``.
    """
    rest = noise_multiplier**-2 - (2 * count_stddev) ** -2
    if rest <= 0:  # a config error: the CLI names it, and no run folder is left behind
        raise ConfigError(
            f"privacy.noise_multiplier = {noise_multiplier:.4g} is too large for the unclipped "
            f"count's noise {count_stddev:.4g}: it needs noise_multiplier < 2 * count_noise "
            f"= {2 * count_stddev:.4g}; raise privacy.count_noise"
        )
    return rest**-0.5
