"""FLoRA (Wang et al., NeurIPS 2024): aggregate LoRA by stacking, so the server's update is
the exact weighted mean of the clients' products ``B_i @ A_i``, not ``mean(B) @ mean(A)``.

Two ways to carry the exact mean forward (``strategy.reproject``):

- ``true`` (default; FlexLoRA's server step, Bai et al., NeurIPS 2024): the truncated SVD of
  the mean product gives the new global ``(A, B)`` at ``adapter.rank``. Exact whenever the
  mean has rank <= ``adapter.rank``, the best rank-r fit otherwise; shapes and bytes stay
  those of one adapter, and components are ordered by singular value, so a client of
  lower rank that keeps the first ``r`` components gets the best rank-``r`` fit.
- ``false`` (FLoRA as published): the mean product is merged into the frozen weights and
  every client restarts LoRA from ``(A0, 0)``. Exact, but a client must download the
  stacked factors of every round it missed (at most the dense merged weights), which is
  what ``extra_down_bytes`` counts.

Non-LoRA trainable tensors (the task head) take the round's mean delta as in FedAvg. The
LoRA factors are read from every client's own update (``needs = {"factors"}``), so server
stages that act on the mean only (noise, secure aggregation, robust reduction) are refused.
"""

from __future__ import annotations

import torch

from fedfm.errors import ConfigError
from fedfm.models.lora import (
    LoraPair,
    factorize,
    lora_pairs,
    mean_product,
    stack,
    truncate_rank,
)
from fedfm.models.params import Params, payload_bytes
from fedfm.strategies.aggregate import add
from fedfm.strategies.base import STRATEGIES, Strategy, Update


@STRATEGIES.register("flora")
class FLoRA(Strategy):
    name = "flora"
    needs = frozenset({"factors"})

    def initialize(self, params: Params) -> None:
        try:
            self.pairs: list[LoraPair] = lora_pairs(list(params))
        except ValueError as err:
            raise ConfigError(
                f"strategy.name = 'flora' stacks both LoRA factors, but {err}. With "
                "adapter.freeze_a = true plain fedavg is already exact (FFA-LoRA)"
            ) from err
        if not self.pairs:
            raise ConfigError(
                "strategy.name = 'flora' aggregates LoRA factors, but the trainable params hold "
                "no LoRA: set adapter.method = 'lora'"
            )
        self.a0 = {p.a: params[p.a].clone() for p in self.pairs}
        self.merged: Params = {}  # base weight name -> sum over rounds of mean products
        self.stack_bytes: list[int] = []  # round r-1 -> bytes of that round's stacked factors
        self.last_seen: dict[int, int] = {}  # client -> the last round it took part in

    def aggregate(
        self, round_: int, global_params: Params, mean: Params, updates: list[Update]
    ) -> Params:
        new = add(global_params, mean)  # the head (LoRA is replaced below)
        weights = [u.num_examples for u in updates]
        stacked: Params = {}
        for pair in self.pairs:
            # each client's own adapter: a client of rank r trained the first r components
            trained = [
                truncate_rank(
                    {
                        pair.a: global_params[pair.a] + u.delta[pair.a],
                        pair.b: global_params[pair.b] + u.delta[pair.b],
                    },
                    u.rank or global_params[pair.a].shape[0],
                )
                for u in updates
            ]
            a = [t[pair.a] for t in trained]
            b = [t[pair.b] for t in trained]
            dtype = global_params[pair.a].dtype
            if self.cfg.reproject:
                a_new, b_new = factorize(mean_product(a, b, weights), rank=a[0].shape[0])
                new[pair.a], new[pair.b] = a_new.to(dtype), b_new.to(dtype)
                continue
            a_stack, b_stack = stack(a, b, weights)
            stacked[pair.a], stacked[pair.b] = a_stack.to(dtype), b_stack.to(dtype)
            product = (b_stack @ a_stack).to(torch.float32)
            previous = self.merged.get(pair.base_weight)
            self.merged[pair.base_weight] = product if previous is None else previous + product
            new[pair.a] = self.a0[pair.a].clone()
            new[pair.b] = torch.zeros_like(global_params[pair.b])
        if stacked:
            self.stack_bytes.append(payload_bytes(stacked))
        return new

    def backbone_delta(self) -> Params:
        return self.merged

    def extra_down_bytes(self, client_id: int, round_: int) -> int:
        if self.cfg.reproject or not self.stack_bytes:
            self.last_seen[client_id] = round_
            return 0
        # it merged every round before the last one it took part in; rounds from then on
        # (stack_bytes[r - 1] is round r's) are new to it
        missed = sum(self.stack_bytes[max(self.last_seen.get(client_id, 0) - 1, 0) :])
        self.last_seen[client_id] = round_
        return min(missed, payload_bytes(self.merged))

    def state_dict(self) -> dict[str, Params]:
        seen = sorted(self.last_seen.items())
        return {
            "merged": {k: v.clone() for k, v in self.merged.items()},
            "bookkeeping": {
                "stack_bytes": torch.tensor(self.stack_bytes, dtype=torch.int64),
                "seen_ids": torch.tensor([c for c, _ in seen], dtype=torch.int64),
                "seen_rounds": torch.tensor([r for _, r in seen], dtype=torch.int64),
            },
        }

    def load_state_dict(self, state: dict[str, Params]) -> None:
        self.merged = {k: v.clone() for k, v in state["merged"].items()}
        book = state["bookkeeping"]
        self.stack_bytes = book["stack_bytes"].tolist()
        self.last_seen = dict(
            zip(book["seen_ids"].tolist(), book["seen_rounds"].tolist(), strict=True)
        )
