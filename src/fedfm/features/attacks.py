"""Simulated malicious clients (``[attack]``): a seeded, fixed share of the federation that
trains on poisoned data or sends a poisoned delta (:mod:`fedfm.attacks`); a backdoor's
success rate on triggered test examples is evaluated with the global model."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedfm.config import RunConfig
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    import torch

    from fedfm.client.context import ClientContext
    from fedfm.data.batching import Encoded
    from fedfm.data.federation import ClientData
    from fedfm.models.params import Params
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState


@register
class Attacks(Feature):
    name = "attacks"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.malicious: frozenset[int] = frozenset()
        self.poison_offset = 0  # > 0: train[poison_offset:] is the poisoned copy of the pool
        self.backdoor_test: Encoded | None = None  # triggered test examples

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.attack.kind != "none"

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        if flat["attack.kind"] != "none" and flat["attack.fraction"] == 0:
            return [
                f"attack.kind = {flat['attack.kind']!r} with attack.fraction = 0 attacks "
                "nobody: set attack.fraction in (0, 1)"
            ]
        return []

    def prepare(self, job: Job) -> None:
        from fedfm.attacks import (
            DATA_ATTACKS,
            backdoor_test_set,
            concat,
            malicious_clients,
            poisoned_pool,
        )

        attack, cfg = self.cfg.attack, self.cfg
        self.malicious = malicious_clients(len(job.federation), attack.fraction, cfg.seed)
        if attack.kind in DATA_ATTACKS:
            train, num_labels = job.dataset.train, job.dataset.num_labels
            pool = poisoned_pool(train, job.train, job.tokenizer, attack, num_labels)
            self.poison_offset = len(job.train)
            job.train = concat(job.train, pool)
        if attack.kind == "backdoor":
            self.backdoor_test = backdoor_test_set(
                job.dataset.test, job.tokenizer, attack, max_length=cfg.data.max_length
            )

    def client_context(self, ctx: ClientContext) -> ClientContext:
        from fedfm.attacks import MODEL_ATTACKS, poison_delta, poisoned_indices

        attack, malicious, offset = self.cfg.attack, self.malicious, self.poison_offset
        if offset:

            def indices(client: ClientData) -> np.ndarray:
                if client.id in malicious:
                    return poisoned_indices(client.train, offset, attack, client.id)
                return client.train

            ctx = replace(ctx, indices=indices)
        if attack.kind in MODEL_ATTACKS and malicious:

            def tamper(client_id: int, delta: Params, generator: torch.Generator) -> Params:
                return poison_delta(delta, attack, generator) if client_id in malicious else delta

            ctx = replace(ctx, tamper=tamper)
        return ctx

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        if not self.malicious:
            return {}
        return {"malicious": sorted(self.malicious & {c.id for c in plan.clients})}

    def evaluate(self, job: Job, state: RoundState) -> Record:
        if self.backdoor_test is None or job.strategy.personalized:
            return {}
        from fedfm.runtime.simulation import evaluate_global

        triggered = evaluate_global(job, state.global_params, self.backdoor_test)
        return {"test_attack_success_rate": triggered["accuracy"]}
