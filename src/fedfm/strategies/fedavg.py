"""FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fedfm.models.params import Params
from fedfm.strategies.aggregate import add
from fedfm.strategies.base import STRATEGIES, LocalHooks, Strategy, Update


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    """The global params plus the cohort's reduced mean delta (by default the example-weighted
    mean of the deltas; the update chain may bound, robustly reduce or noise it).

    Example:
        >>> from fedfm.config import StrategyConfig
        >>> s = FedAvg(StrategyConfig())
        >>> u = [Update(0, {"w": torch.tensor([1.0])}, 1), Update(1, {"w": torch.tensor([4.0])}, 2)]
        >>> mean = {"w": torch.tensor([3.0])}  # the round's reduction of u: its weighted mean
        >>> s.aggregate(1, {"w": torch.tensor([1.0])}, mean, u)["w"]
        tensor([4.])
    """

    name = "fedavg"

    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        return add(global_params, mean)


def proximal_term(
    mu: float, anchor: Params
) -> Callable[[Mapping[str, torch.Tensor]], torch.Tensor]:
    """``(mu / 2) * ||w - w_global||^2`` over the trainable tensors."""
    placed: Params = {}

    def term(live: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not placed:  # move the anchor to the model's device once
            placed.update({k: v.to(live[k].device) for k, v in anchor.items()})
        return 0.5 * mu * torch.stack([((live[k] - placed[k]) ** 2).sum() for k in placed]).sum()

    return term


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    """FedAvg plus a proximal term in every client's loss that pulls it toward the global params."""

    name = "fedprox"
    local_terms = True  # the proximal term is not per-example (DP-SGD would miss it)

    def client_hooks(
        self, global_params: Params, payload: Params, client_state: Params
    ) -> LocalHooks:
        anchor = {k: v.detach().clone() for k, v in global_params.items()}
        return LocalHooks(extra_loss=proximal_term(self.cfg.proximal_mu, anchor))
