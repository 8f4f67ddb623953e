"""Server optimisers on the pseudo-gradient: FedAvgM (Hsu et al., 2019) and FedAdam,
FedYogi, FedAdagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

With ``delta`` the round's reduced mean delta (by default the example-weighted mean of client
deltas; ``-delta`` is the pseudo-gradient):

- FedAvgM:    ``m = beta * m + delta``;  ``x = x + server_lr * m``
- FedAdagrad: ``v = v + delta^2``
- FedAdam:    ``v = beta2 * v + (1 - beta2) * delta^2``
- FedYogi:    ``v = v - (1 - beta2) * delta^2 * sign(v - delta^2)``
- all three:  ``m = beta1 * m + (1 - beta1) * delta``;  ``x = x + server_lr * m / (sqrt(v) + tau)``

``v`` starts at ``tau^2`` as in the paper; there is no bias correction (as in the paper).
"""

from __future__ import annotations

import torch

from fedfm.models.params import Params
from fedfm.strategies.aggregate import zeros_like
from fedfm.strategies.base import STRATEGIES, Strategy, Update


class _ServerMomentState(Strategy):
    """Holds named server tensors (moments) and saves them in ``state_dict``."""

    moments: tuple[str, ...] = ()

    def initialize(self, params: Params) -> None:
        self.state: dict[str, Params] = {m: self._initial(m, params) for m in self.moments}

    def _initial(self, moment: str, params: Params) -> Params:
        return zeros_like(params)

    def state_dict(self) -> dict[str, Params]:
        return {k: {n: t.clone() for n, t in v.items()} for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Params]) -> None:
        self.state = {k: {n: t.clone() for n, t in v.items()} for k, v in state.items()}


@STRATEGIES.register("fedavgm")
class FedAvgM(_ServerMomentState):
    """FedAvg with server momentum on the averaged client delta."""

    name = "fedavgm"
    moments = ("m",)

    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        beta, lr = self.cfg.server_momentum, self.cfg.server_lr
        m = self.state["m"]
        for k in m:
            m[k] = beta * m[k] + mean[k]
        return {k: global_params[k] + lr * m[k] for k in global_params}


class FedOpt(_ServerMomentState):
    """Adaptive server optimiser; subclasses define the second-moment rule."""

    moments = ("m", "v")

    def _initial(self, moment: str, params: Params) -> Params:
        if moment == "v":
            return {k: torch.full_like(t, self.cfg.tau**2) for k, t in params.items()}
        return zeros_like(params)

    def _beta1(self) -> float:
        return self.cfg.beta1

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        b1, lr, tau = self._beta1(), self.cfg.server_lr, self.cfg.tau
        m, v = self.state["m"], self.state["v"]
        new = {}
        for k, d in mean.items():
            m[k] = b1 * m[k] + (1 - b1) * d
            v[k] = self._second_moment(v[k], d * d)
            new[k] = global_params[k] + lr * m[k] / (v[k].sqrt() + tau)
        return new


@STRATEGIES.register("fedadam")
class FedAdam(FedOpt):
    name = "fedadam"

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        b2 = self.cfg.beta2
        return b2 * v + (1 - b2) * delta_sq


@STRATEGIES.register("fedyogi")
class FedYogi(FedOpt):
    name = "fedyogi"

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.cfg.beta2) * delta_sq * torch.sign(v - delta_sq)


@STRATEGIES.register("fedadagrad")
class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v + delta_sq
