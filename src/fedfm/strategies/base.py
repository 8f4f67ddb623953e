"""The strategy: a federated algorithm's server half *and* client half in one class.

A round is: ``select`` a cohort → send global params plus ``payload`` → each client runs
the local trainer with ``client_hooks`` and closes with ``client_finish`` → the update chain
(:mod:`fedfm.update`) reduces the updates to one mean delta → the server ``aggregate``s.
Strategy state (moments, control variates) lives in the strategy and is saved by
``state_dict``. What a strategy reads beyond the mean delta it declares (``needs``), so the
chain's stages are checked against it (:mod:`fedfm.update.compat`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedfm.config import StrategyConfig
from fedfm.models.params import Params
from fedfm.registry import Registry


@dataclass(frozen=True)
class LocalHooks:
    """How a strategy changes the local loop (the client half of the algorithm).

    Attributes:
        extra_loss: added to the task loss each step, given the live trainable tensors
            (FedProx's proximal term).
        grad_correction: added to each trainable tensor's gradient after backward
            (SCAFFOLD's ``c - c_i``).
        frozen: trainable tensors this client leaves alone (a resource profile that trains
            only the top layers); their gradients are dropped, so no optimiser touches them.
    """

    extra_loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None
    grad_correction: Params | None = None
    frozen: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Update:
    """What a client returns after local training.

    Attributes:
        client_id: who sent it.
        delta: the client's change to the trainable tensors (new params - global params):
            what the update pipeline clips, noises, compresses and aggregates.
        num_examples: examples trained on (the FedAvg weight).
        metrics: local training metrics (e.g. ``train_loss``).
        extras: strategy-specific tensors (SCAFFOLD: the control variate delta).
        bytes_up: exact serialised size of what was uploaded (the pipeline's wire form).
        rank: the LoRA rank the client trained (its first ``rank`` components; 0 = all).
    """

    client_id: int
    delta: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extras: Params = field(default_factory=dict)
    bytes_up: int = 0
    rank: int = 0


class Strategy(ABC):
    """Base class: seeded cohort selection and the no-op client half.

    Attributes:
        communicates: ``False`` for the no-federation baselines (nothing travels, so no
            bytes are counted, and no update stage has anything to act on).
        needs: what ``aggregate`` reads of the updates besides the reduced mean delta:
            ``"factors"`` (each client's own LoRA factors, FLoRA) or ``"extras"`` (tensors
            uploaded beside the update, SCAFFOLD's control variate deltas). Server stages
            (noise, secure aggregation, robust reduction) cover only the mean delta.
        local_terms: the client half adds a loss term or gradient correction that is not
            per-example (FedProx, SCAFFOLD), which DP-SGD cannot cover.
        pooled: the round trains one client that holds every client's training data
            (the centralised ceiling).
        personalized: each client keeps its own params (``personal_params``, or the tensors
            named by ``strategy.personal``); such a run is evaluated on every client's
            held-out split with that client's params.
    """

    name: str = ""
    communicates: bool = True
    needs: frozenset[str] = frozenset()
    local_terms: bool = False
    pooled: bool = False
    personalized: bool = False

    def __init__(self, cfg: StrategyConfig, *, num_clients: int = 1) -> None:
        self.cfg = cfg
        self.num_clients = num_clients  # the federation's size (SCAFFOLD's N)
        self.personalized = type(self).personalized or bool(cfg.personal)

    # ------------------------------------------------------------------ server half
    def cohort_size(self, num_clients: int) -> int:
        if self.cfg.clients_per_round > 0:
            return min(self.cfg.clients_per_round, num_clients)
        return max(1, round(self.cfg.fraction * num_clients))

    def select(self, round_: int, num_clients: int, *, seed: int) -> list[int]:
        """A seeded cohort: a pure function of (seed, round), so resuming re-draws it exactly."""
        rng = np.random.default_rng([seed, round_])
        size = self.cohort_size(num_clients)
        return sorted(rng.choice(num_clients, size=size, replace=False).tolist())

    def initialize(self, params: Params) -> None:  # noqa: B027 (optional hook)
        """Set up server state for ``params`` (called once before round 1)."""

    def payload(self, round_: int) -> Params:
        """Tensors sent to each cohort member beside the global params."""
        return {}

    @abstractmethod
    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        """New global params from the round's reduced ``mean`` delta (the update chain's:
        the example-weighted mean unless a stage changes it) and its valid updates (at least
        one; read them only for what ``needs`` declares)."""

    def backbone_delta(self) -> Params:
        """Dense changes to frozen weights, by name, that every client applies (scaled by the
        adapter's ``alpha / rank``): FLoRA's merged products. Empty for most strategies."""
        return {}

    def extra_down_bytes(self, client_id: int, round_: int) -> int:
        """Bytes a cohort member downloads beyond the global params (called once per member
        per round, so a strategy may track what each client already has)."""
        return 0

    def state_dict(self) -> dict[str, Params]:
        return {}

    def load_state_dict(self, state: dict[str, Params]) -> None:
        del state

    # ------------------------------------------------------------------ client half
    def client_start(self, global_params: Params, client_state: Params) -> Params:
        """The params a client starts local training from (the global params by default)."""
        return global_params

    def personal_params(self, global_params: Params, client_state: Params) -> Params:
        """The params a client is evaluated with (the global params by default)."""
        return global_params

    def client_hooks(
        self, global_params: Params, payload: Params, client_state: Params
    ) -> LocalHooks:
        return LocalHooks()

    def client_finish(
        self,
        global_params: Params,
        new_params: Params,
        payload: Params,
        client_state: Params,
        *,
        steps: int,
        lr: float,
    ) -> tuple[Params, Params]:
        """After local training: ``(extras to upload, new client state)``.

        ``new_params`` may be the model's live tensors
        (:class:`~fedfm.client.trainer.LocalResult`): a state that keeps them keeps copies.
        """
        return {}, client_state


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
