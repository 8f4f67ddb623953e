"""The two no-federation references every FL claim is measured against.

``local``: each client trains alone on its own data, round after round, and is evaluated on
its own held-out split; nothing travels. ``centralized``: one model trained on the pooled
data of all clients (the ceiling FL tries to approach); a round is one pass of local
training over the pooled data.
"""

from __future__ import annotations

from fedfm.models.params import Params
from fedfm.strategies.aggregate import add
from fedfm.strategies.base import STRATEGIES, Strategy, Update


@STRATEGIES.register("local")
class LocalOnly(Strategy):
    """Every client keeps its own params (its state); the server aggregates nothing.

    Example:
        >>> import torch
        >>> from fedfm.config import StrategyConfig
        >>> s = LocalOnly(StrategyConfig())
        >>> g = {"w": torch.zeros(1)}
        >>> s.aggregate(1, g, {"w": torch.ones(1)}, [Update(0, {"w": torch.ones(1)}, 1)]) is g
        True
    """

    name = "local"
    communicates = False
    personalized = True

    def client_start(self, global_params: Params, client_state: Params) -> Params:
        return client_state or global_params

    def personal_params(self, global_params: Params, client_state: Params) -> Params:
        return client_state or global_params

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
        return {}, {k: v.clone() for k, v in new_params.items()}  # the live tensors: copied

    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        return global_params


@STRATEGIES.register("centralized")
class Centralized(Strategy):
    """One model trained on the union of all clients' training data; nothing travels."""

    name = "centralized"
    communicates = False
    pooled = True

    def select(self, round_: int, num_clients: int, *, seed: int) -> list[int]:
        return list(range(num_clients))

    def cohort_size(self, num_clients: int) -> int:
        return 1  # one pooled client trains per round

    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        return add(global_params, mean)
