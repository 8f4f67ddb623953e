"""Personalisation (``strategy.personal``): trainable tensors each client keeps to itself
(a local head, FedSA-LoRA's B). They never travel; the client's own copy is swapped in for
its training and its evaluation, and saved per client at the end of the run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.features.base import Feature, register

if TYPE_CHECKING:
    from fedfm.runtime.job import Job


@register
class Personal(Feature):
    name = "personal"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.names: frozenset[str] = frozenset()  # the tensors each client keeps

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return bool(cfg.strategy.personal)

    def setup(self, job: Job) -> None:
        from fedfm.models.adapters import match_params

        self.names = match_params(
            list(job.initial_params), self.cfg.strategy.personal, field="strategy.personal"
        )
