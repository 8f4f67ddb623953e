"""The update pipeline: ordered stages between a client's delta and the server's aggregate.

Each stage has a client half (``encode``: the delta, or what the previous stage made of it,
into what goes on the wire, with per-client state such as an error-feedback residual) and a
server half (``decode``: back to a delta). Stages compose, so privacy, compression and
robustness are switched on by config for every strategy instead of forking strategies::

    client: train → delta → [stage 1 encode] → ... → [stage n encode] → wire
    server: wire → [stage n decode] → ... → [stage 1 decode] → aggregate

``bytes_up`` is the serialised size of the wire form, so a compressing stage's saving is
counted exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from fedfm.config import RunConfig
from fedfm.models.params import Params


class Stage(ABC):
    """One step of the update pipeline.

    Attributes:
        name: prefixes this stage's entries in a client's pipeline state.
    """

    name: str = ""

    @abstractmethod
    def encode(
        self, delta: Params, state: Params, generator: torch.Generator
    ) -> tuple[Params, Params]:
        """Client half: ``(wire form, this client's new state for this stage)``."""

    @abstractmethod
    def decode(self, wire: Params, like: Params) -> Params:
        """Server half: the delta (names, shapes and dtypes of ``like``) from its wire form."""

    def signals(self, delta: Params, generator: torch.Generator) -> dict[str, float]:
        """Scalars this stage's client half reports beside the update (DP's unclipped bit);
        called with the stage's input before ``encode``. Each costs 4 bytes up."""
        return {}


class Pipeline:
    """Stages applied in order on the client and undone in reverse on the server.

    A shape-changing stage (compression) must come last: the server half decodes every stage
    with the delta's own names and shapes.
    """

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages = list(stages)

    def __bool__(self) -> bool:
        return bool(self.stages)

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
        for stage in reversed(self.stages):
            wire = stage.decode(wire, like)
        return wire


def build_pipeline(cfg: RunConfig, *, clip: Stage | None = None) -> Pipeline:
    """The pipeline a config asks for (empty: deltas travel as they are).

    Args:
        clip: client-level DP's clip (and local noise) stage, which goes first.
    """
    from fedfm.compression.stage import Compress  # noqa: PLC0415 (stages import this module)

    stages: list[Stage] = [clip] if clip is not None else []
    if cfg.compression.method != "none":
        stages.append(Compress(cfg.compression))
    return Pipeline(stages)
