"""SCAFFOLD (Karimireddy et al., ICML 2020), both halves, option II control variates.

Server holds ``c``; client ``i`` holds ``c_i`` (zeros at first). Each local step follows
``grad + c - c_i``. After ``K`` steps with learning rate ``lr`` from global ``x`` to local ``y``:
``c_i+ = c_i - c + (x - y) / (K * lr)``; the client uploads ``y`` and ``c_i+ - c_i``. The
server sets ``x = x + server_lr * mean(y - x)`` and ``c = c + (|S| / N) * mean(delta c_i)``.

The ``(x - y) / (K * lr)`` estimate assumes plain SGD; use ``client.optimizer = "sgd"``.
``mean(y - x)`` is the round's reduced mean delta; the control variate deltas travel beside
the update (``needs = {"extras"}``) and the correction is not per-example (``local_terms``).
"""

from __future__ import annotations

from fedfm.models.params import Params
from fedfm.strategies.aggregate import add, subtract, zeros_like
from fedfm.strategies.base import STRATEGIES, LocalHooks, Strategy, Update


@STRATEGIES.register("scaffold")
class Scaffold(Strategy):
    name = "scaffold"
    needs = frozenset({"extras"})
    local_terms = True

    def initialize(self, params: Params) -> None:
        self.c = zeros_like(params)

    def payload(self, round_: int) -> Params:
        return {f"c.{k}": v for k, v in self.c.items()}

    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        n = len(updates)
        for k in self.c:
            mean_dc = sum(u.extras[f"dc.{k}"] for u in updates) / n
            self.c[k] = self.c[k] + (n / self.num_clients) * mean_dc
        return add(global_params, mean, self.cfg.server_lr)

    def state_dict(self) -> dict[str, Params]:
        return {"c": {k: v.clone() for k, v in self.c.items()}}

    def load_state_dict(self, state: dict[str, Params]) -> None:
        self.c = {k: v.clone() for k, v in state["c"].items()}

    # ------------------------------------------------------------------ client half
    @staticmethod
    def _server_c(payload: Params) -> Params:
        return {k[2:]: v for k, v in payload.items() if k.startswith("c.")}

    def client_hooks(
        self, global_params: Params, payload: Params, client_state: Params
    ) -> LocalHooks:
        c = self._server_c(payload)
        c_i = client_state or zeros_like(c)
        return LocalHooks(grad_correction=subtract(c, c_i))

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
        c = self._server_c(payload)
        c_i = client_state or zeros_like(c)
        scale = 1.0 / (max(steps, 1) * lr)
        c_new = {k: c_i[k] - c[k] + scale * (global_params[k] - new_params[k]) for k in c}
        extras = {f"dc.{k}": c_new[k] - c_i[k] for k in c}
        return extras, c_new
