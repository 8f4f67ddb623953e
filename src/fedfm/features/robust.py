"""Byzantine-robust aggregation (``[robust]``): norm bounds and a robust reduction in place
of the mean, as stages of the update chain (:mod:`fedfm.update.robust`); this module checks
the settings and the cohort they need."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedfm.config import RobustConfig, RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, register

if TYPE_CHECKING:
    from fedfm.runtime.job import Job

DISTANCE_BASED = ("krum", "multikrum")  # score each update by its distance to the others


@register
class RobustAggregation(Feature):
    name = "robust"

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.robust != RobustConfig()

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        if not 0 <= flat["robust.trim"] < 0.5:
            return [f"robust.trim = {flat['robust.trim']!r} must be in [0, 0.5)"]
        return []

    def setup(self, job: Job) -> None:
        cohort = job.strategy.cohort_size(len(job.federation))
        aggregator = self.cfg.robust.aggregator
        if aggregator in DISTANCE_BASED and cohort < 3:
            raise ConfigError(
                f"robust.aggregator = {aggregator!r} scores each update by its distance to the "
                f"others and needs a cohort of at least 3, got {cohort}: raise "
                "strategy.fraction or strategy.clients_per_round"
            )
