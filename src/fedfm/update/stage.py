"""One stage of the update chain: a client half and a server half in one small class.

Client half: ``signals`` (scalars reported beside the update) and ``encode`` (the delta, or
what earlier stages made of it, into what goes on the wire, with per-client state such as an
error-feedback residual). Server half, each a no-op unless a stage overrides it:

- ``decode``: one update's wire form back to a delta (compression);
- ``bound``: the cohort's deltas before reduction (a norm bound);
- ``reduce``: the cohort into one aggregate; at most one stage of a chain reduces (a robust
  aggregator, secure aggregation's masked sum); without one the chain takes the
  example-weighted mean, or the plain sum when a stage's ``finish`` asks for it;
- ``finish``: the aggregate after reduction (central DP noise turns a sum into a noised mean
  and moves the adaptive clip).

Each server half returns ``(result, info)``: ``info`` lands in the round's record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from fedfm.models.params import Params
from fedfm.strategies.aggregate import weighted_average
from fedfm.strategies.base import Update

REDUCE_STREAM = 2**21  # seed stream of the server's noise and dropout draws

Info = dict[str, Any]  # what a server half adds to the round's record


@dataclass(frozen=True)
class Cohort:
    """One round's valid updates as the server halves see them.

    Attributes:
        round: the round; with ``seed`` it seeds the server's draws.
        seed: the run's seed.
        updates: the updates as received (client ids, example counts, signals).
        deltas: their deltas as the stages so far left them (a norm bound scales them).
    """

    round: int
    seed: int
    updates: list[Update]
    deltas: list[Params]

    @property
    def weights(self) -> list[float]:
        """The example counts (FedAvg's weights)."""
        return [float(u.num_examples) for u in self.updates]

    def rng(self) -> np.random.Generator:
        """A fresh numpy generator for the server's draws of this round (the same each call)."""
        return np.random.default_rng([self.seed, self.round, REDUCE_STREAM])

    def generator(self) -> torch.Generator:
        """A fresh torch generator for the server's noise of this round (the same each call)."""
        return torch.Generator().manual_seed(int(self.rng().integers(2**31)))


@dataclass(frozen=True)
class Aggregate:
    """What a cohort reduces to.

    Attributes:
        delta: the cohort's mean delta or, when ``summed``, the plain (unweighted) sum.
        summed: a later stage's ``finish`` still has to turn the sum into a mean.
        signals: the cohort sums of the signals a finishing stage asked for (``stage/name``).
        bytes_up: what the reduction's protocol cost the clients beyond their updates.
        bytes_down: what it cost the server to send.
    """

    delta: Params
    summed: bool = False
    signals: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0


def mean_or_sum(cohort: Cohort, signals: Sequence[str] | None) -> Aggregate:
    """The example-weighted mean of the cohort's deltas (``signals`` None), or their plain sum
    with the sums of the named signals (a finishing stage makes the mean).

    Example:
        >>> us = [Update(0, {"w": torch.tensor([1.0])}, 1),
        ...       Update(1, {"w": torch.tensor([4.0])}, 2)]
        >>> cohort = Cohort(1, 0, us, [u.delta for u in us])
        >>> mean_or_sum(cohort, None).delta["w"], mean_or_sum(cohort, ()).delta["w"]
        (tensor([3.]), tensor([5.]))
    """
    deltas = cohort.deltas
    if signals is None:
        return Aggregate(weighted_average(deltas, cohort.weights))
    total = {k: torch.stack([d[k] for d in deltas]).sum(dim=0) for k in deltas[0]}
    sums = {s: sum(u.metrics.get(s, 0.0) for u in cohort.updates) for s in signals}
    return Aggregate(total, summed=True, signals=sums)


class Stage:
    """One step of the update chain; every half is a no-op until a stage overrides it.

    Attributes:
        name: prefixes this stage's entries in a client's chain state and its signals.
        encodes: the client half changes the update (the wire form is not the delta).
        reduces: ``reduce`` makes the aggregate (at most one such stage per chain).
        takes_sum: ``finish`` wants the plain sum of the deltas, not their weighted mean.
        summed: this stage's signals whose cohort sums ``finish`` reads.
    """

    name: ClassVar[str] = ""
    encodes: ClassVar[bool] = False
    reduces: ClassVar[bool] = False
    takes_sum: ClassVar[bool] = False
    summed: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ client half
    def signals(self, delta: Params, generator: torch.Generator) -> dict[str, float]:
        """Scalars this stage's client half reports beside the update (DP's unclipped bit);
        called with the stage's input before ``encode``. Each costs 4 bytes up."""
        return {}

    def encode(
        self, delta: Params, state: Params, generator: torch.Generator
    ) -> tuple[Params, Params]:
        """``(wire form, this client's new state for this stage)``."""
        return delta, {}

    # ------------------------------------------------------------------ server half
    def decode(self, wire: Params, like: Params) -> Params:
        """One update's delta (names, shapes and dtypes of ``like``) from its wire form."""
        return wire

    def bound(self, cohort: Cohort) -> tuple[Cohort, Info]:
        """The cohort with its deltas changed before reduction."""
        return cohort, {}

    def reduce(self, cohort: Cohort, signals: Sequence[str] | None) -> tuple[Aggregate, Info]:
        """The cohort's aggregate, as :func:`mean_or_sum` defines it (only when ``reduces``)."""
        raise NotImplementedError(f"stage {self.name!r} does not reduce")

    def finish(self, aggregate: Aggregate, cohort: Cohort) -> tuple[Aggregate, Info]:
        """The aggregate after reduction."""
        return aggregate, {}
