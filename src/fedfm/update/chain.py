"""The update chain: every stage between a client's delta and the round's mean delta.

Stages run in order on the client and their server halves in the round::

    client: delta → [encode 1] → ... → [encode n] → wire
    server: wire → [decode n] → ... → [decode 1] → delta        (per update)
            deltas → bound → reduce → finish → mean delta       (per round)

so privacy, compression and robustness are switched on by config for every strategy instead
of forking strategies. ``bytes_up`` is the serialised size of the wire form, so a
compressing stage's saving is counted exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedfm.config import RunConfig
from fedfm.models.params import Params
from fedfm.privacy.client_dp import ClientDP
from fedfm.strategies.base import Update
from fedfm.update.compress import Compress
from fedfm.update.dp import ClipStage
from fedfm.update.robust import NormBound, RobustReduce
from fedfm.update.secure_sum import SecureSum
from fedfm.update.stage import Cohort, Info, Stage, mean_or_sum


@dataclass(frozen=True)
class Reduced:
    """The round's reduction.

    Attributes:
        mean: the cohort's delta that the strategy steps on.
        info: what the stages learned on the way (the updates Krum kept, the clip norm), for
            the round's record, in the order the stages ran.
        bytes_up: the reduction protocol's cost to the clients beyond their updates.
        bytes_down: its cost to the server.
    """

    mean: Params
    info: Info
    bytes_up: int = 0
    bytes_down: int = 0


class Chain:
    """Stages applied in order on the client, undone in reverse on the server, and reduced.

    A shape-changing stage (compression) must come last among those that encode: the server
    half decodes every stage with the delta's own names and shapes.

    Example:
        >>> chain = Chain()
        >>> us = [Update(0, {"w": torch.tensor([1.0])}, 1),
        ...       Update(1, {"w": torch.tensor([4.0])}, 2)]
        >>> chain.reduce(1, us).mean["w"]  # no stage: the example-weighted mean
        tensor([3.])
    """

    def __init__(self, stages: Sequence[Stage] = (), *, seed: int = 0) -> None:
        self.stages = list(stages)
        self.seed = seed
        reducers = [s for s in self.stages if s.reduces]
        if len(reducers) > 1:
            names = ", ".join(s.name for s in reducers)
            raise ValueError(f"an update chain has at most one reducing stage, got {names}")
        self.reducer = reducers[0] if reducers else None
        self.sums: tuple[str, ...] | None = None  # None: reduce to the weighted mean
        if any(s.takes_sum for s in self.stages):
            self.sums = tuple(f"{s.name}/{k}" for s in self.stages for k in s.summed)

    def __bool__(self) -> bool:
        """Whether a client's update changes on its way (else the wire form is the delta)."""
        return any(s.encodes for s in self.stages)

    def client(
        self, delta: Params, state: Params, generator: torch.Generator
    ) -> tuple[Params, Params, dict[str, float]]:
        """``(wire, new state, signals)``; ``state`` holds every stage's entries as
        ``stage/name``, ``signals`` every stage's scalars as ``stage/name``."""
        new_state: Params = {}
        signals: dict[str, float] = {}
        for stage in self.stages:
            prefix = f"{stage.name}/"
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            signals.update({prefix + k: v for k, v in stage.signals(delta, generator).items()})
            delta, own = stage.encode(delta, own, generator)
            new_state.update({prefix + k: v for k, v in own.items()})
        return delta, new_state, signals

    def server(self, wire: Params, like: Params) -> Params:
        """One update's delta from its wire form."""
        for stage in reversed(self.stages):
            wire = stage.decode(wire, like)
        return wire

    def reduce(self, round_: int, updates: list[Update]) -> Reduced:
        """The round's mean delta from its valid updates (at least one): bound, reduce, finish."""
        cohort = Cohort(round_, self.seed, updates, [u.delta for u in updates])
        info: Info = {}
        for stage in self.stages:
            cohort, got = stage.bound(cohort)
            info.update(got)
        if self.reducer is None:
            aggregate = mean_or_sum(cohort, self.sums)
        else:
            aggregate, got = self.reducer.reduce(cohort, self.sums)
            info.update(got)
        for stage in self.stages:
            aggregate, got = stage.finish(aggregate, cohort)
            info.update(got)
        if aggregate.summed:
            raise ValueError("the update chain ends with a sum: no stage turned it into a mean")
        return Reduced(aggregate.delta, info, aggregate.bytes_up, aggregate.bytes_down)


def build_chain(cfg: RunConfig, *, dp: ClientDP | None = None) -> Chain:
    """The chain a config asks for (no stage: deltas travel as they are, and are averaged).

    Args:
        dp: client-level DP (clip, local noise, central noise), which goes first.
    """
    stages: list[Stage] = [ClipStage(dp)] if dp is not None else []
    if cfg.compression.method != "none":
        stages.append(Compress(cfg.compression))
    if cfg.robust.norm_bound > 0:
        stages.append(NormBound(cfg.robust.norm_bound))
    if cfg.secagg.enabled:  # the server sees no single update: nothing else reduces
        stages.append(SecureSum(cfg.secagg))
    elif cfg.robust.aggregator != "mean":
        stages.append(RobustReduce(cfg.robust))
    return Chain(stages, seed=cfg.seed)
