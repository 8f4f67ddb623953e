"""How a federation uses a synthetic set: pure functions over client indices.

The synthetic examples sit in the training pool after the real ones, at indices
``synthetic`` (an int array). ``client_mix`` adds to each client ``round(ratio * n)``
synthetic examples (n: its real training examples), drawn without replacement while the set
lasts (FedGC); ``synthetic_only`` gives each client an equal, seeded share of the synthetic
set in place of its real data (a lower reference). Clients keep their real eval split.

Example:
    >>> from fedfm.data.federation import ClientData, Federation
    >>> fed = Federation((ClientData(0, "a", np.arange(4), np.arange(0)),))
    >>> len(with_synthetic(fed, np.arange(10, 20), mode="client_mix", ratio=0.5, seed=0)[0].train)
    6
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedfm.data.federation import Federation
from fedfm.errors import ConfigError

MODES = ("none", "server_warmup", "client_mix", "synthetic_only")


def with_synthetic(
    federation: Federation, synthetic: np.ndarray, *, mode: str, ratio: float, seed: int
) -> Federation:
    """The federation whose clients train on synthetic examples as ``mode`` says
    (``none`` and ``server_warmup`` leave the clients as they are)."""
    if mode not in MODES:
        raise ConfigError(f"synthetic.mode = {mode!r} is not one of {MODES}")
    if mode in ("none", "server_warmup"):
        return federation
    if mode == "synthetic_only":
        if len(synthetic) < len(federation):
            raise ConfigError(
                f"synthetic.mode = 'synthetic_only' gives each of {len(federation)} clients a "
                f"share of {len(synthetic)} synthetic examples: raise synthetic.size"
            )
        order = np.random.default_rng([seed, 5]).permutation(synthetic)
        shares = np.array_split(order, len(federation))
        return Federation(
            tuple(
                replace(c, train=np.sort(s))
                for c, s in zip(federation.clients, shares, strict=True)
            )
        )
    clients = []
    for c in federation.clients:
        k = int(round(ratio * len(c.train)))
        rng = np.random.default_rng([seed, 6, c.id])
        extra = rng.choice(synthetic, size=k, replace=k > len(synthetic))
        clients.append(replace(c, train=np.concatenate([c.train, np.sort(extra)])))
    return Federation(tuple(clients))
