"""Resource profiles: each simulated client's LoRA rank, trainable layers and compute
speed, and what a per-round deadline lets it do (system heterogeneity, as in HetLoRA and
FlexLoRA).

Time is simulated, not measured: a client of speed ``s`` needs ``n / s`` time units for
``n`` local steps, and ``system.deadline`` is in the same units (steps at speed 1.0). A
client that cannot finish in time is dropped, or with ``system.late = "partial"`` sends the
steps it managed (``floor(deadline * s)``; none at all is a drop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedfm.config import SystemConfig

PROFILE_STREAM = 7  # the seed stream of the draws (independent of partitioning)


@dataclass(frozen=True)
class ResourceProfile:
    rank: int  # LoRA components the client trains (0: the model's own rank)
    speed: float  # relative compute speed (1.0 = reference)
    layers: int = 0  # top transformer layers whose tensors it trains (0: all)
    steps: int = 0  # local steps of a full round (0: from the [client] config)


def sample_profiles(num_clients: int, cfg: SystemConfig, *, seed: int) -> list[ResourceProfile]:
    """One seeded profile per client: rank and speed drawn uniformly from the config's lists.

    Example:
        >>> ps = sample_profiles(3, SystemConfig(ranks=(2, 8)), seed=0)
        >>> sorted({p.rank for p in ps}) <= [2, 8], {p.speed for p in ps}
        (True, {1.0})
    """
    rng = np.random.default_rng([seed, PROFILE_STREAM])
    ranks = rng.choice(cfg.ranks, size=num_clients) if cfg.ranks else [0] * num_clients
    speeds = rng.choice(cfg.speeds, size=num_clients) if cfg.speeds else [1.0] * num_clients
    layers = rng.choice(cfg.layers, size=num_clients) if cfg.layers else [0] * num_clients
    steps = rng.choice(cfg.steps, size=num_clients) if cfg.steps else [0] * num_clients
    return [
        ResourceProfile(int(r), float(s), int(n), int(k))
        for r, s, n, k in zip(ranks, speeds, layers, steps, strict=True)
    ]


def steps_within_deadline(steps: int, speed: float, cfg: SystemConfig) -> int:
    """The local steps a client gets to do this round: all ``steps`` when it makes the
    deadline, else ``floor(deadline * speed)`` (``partial``) or 0 (``drop``)."""
    if cfg.deadline <= 0 or steps / speed <= cfg.deadline:
        return steps
    if cfg.late == "partial":
        return max(0, math.floor(cfg.deadline * speed))
    return 0
