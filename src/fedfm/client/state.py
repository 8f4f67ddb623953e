"""What a client keeps between the rounds it takes part in.

Three small groups of tensors, none of which goes to the server: the strategy's client
state (SCAFFOLD's control variate), its personal tensors (``strategy.personal``: a local
head, FedSA-LoRA's B) and its update pipeline's state (the error-feedback residual). In
simulation the server process holds every client's (:class:`~fedfm.runtime.round.RoundState`,
saved in checkpoints); a remote client holds its own, on its own disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedfm.models.params import Params


@dataclass
class ClientState:
    """One client's states between rounds (empty before its first)."""

    strategy: Params = field(default_factory=dict)
    personal: Params = field(default_factory=dict)
    pipeline: Params = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.strategy or self.personal or self.pipeline)
