"""Secure aggregation (``[secagg]``): the server learns only the cohort's sum. The protocol
is :mod:`fedfm.privacy.secagg`, its masking a stage of the update chain
(:class:`fedfm.update.secure_sum.SecureSum`); this module checks what it combines with."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, register

if TYPE_CHECKING:
    from fedfm.runtime.job import Job


@register
class SecureAggregation(Feature):
    name = "secagg"

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.secagg.enabled

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        if not flat["secagg.enabled"]:
            return []
        problems = []
        robust = flat["robust.aggregator"]
        if robust != "mean":
            problems.append(
                f"secagg.enabled = true with robust.aggregator = {robust!r}: the server sees "
                "only the sum, so it cannot take a median or pick updates; set "
                "robust.aggregator = 'mean'"
            )
        if flat["compression.method"] != "none":
            problems.append(
                f"secagg.enabled = true with compression.method = "
                f"{flat['compression.method']!r}: masked vectors are dense ring elements; set "
                "compression.method = 'none'"
            )
        if flat["robust.norm_bound"] > 0:
            problems.append(
                "secagg.enabled = true with robust.norm_bound > 0: the server cannot see an "
                "update's norm; bound it on the client with privacy.clip (privacy.noise) instead"
            )
        return problems

    def setup(self, job: Job) -> None:
        """Refuse a cohort too small to hide a client, or too small to survive its dropouts."""
        sa = self.cfg.secagg
        cohort = job.strategy.cohort_size(len(job.federation))
        if cohort < 3:
            raise ConfigError(
                f"secagg.enabled = true needs a cohort of at least 3 (pairwise masks hide a "
                f"client only among others), got {cohort}: raise strategy.fraction or "
                "clients_per_round"
            )
        needed = max(2, math.ceil(sa.threshold * cohort))
        drops = math.floor(sa.dropout * cohort)
        if drops > cohort - needed:
            raise ConfigError(
                f"secagg.dropout = {sa.dropout:g} drops {drops} of a cohort of {cohort}, but "
                f"secagg.threshold = {sa.threshold:g} needs {needed} survivors to unmask (at "
                f"most {cohort - needed} may drop): lower one of the two"
            )
