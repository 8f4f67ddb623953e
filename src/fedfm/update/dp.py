"""Client-level DP as a stage of the update chain (the mechanism: :mod:`fedfm.privacy.client_dp`).

Client half: clip, then (distributed noise) add this client's share of the noise, and
report the unclipped bit. Server half: the noised mean of the cohort's plain sum, and the
adaptive clip norm's step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fedfm.models.params import Params
from fedfm.privacy.client_dp import UNCLIPPED, ClientDP
from fedfm.privacy.clipping import clip_update, l2_norm
from fedfm.privacy.noise import add_gaussian_noise
from fedfm.update.stage import Aggregate, Cohort, Info, Stage


@dataclass
class ClipStage(Stage):
    """Client-level DP in the update chain. Client half: clip, then (distributed noise) add
    this client's share. Server half: the noised mean of the cohort's plain sum.

    Example:
        >>> from fedfm.config import PrivacyConfig
        >>> from fedfm.privacy.client_dp import ClientDP
        >>> dp = ClientDP(PrivacyConfig(noise="central", noise_multiplier=1.0, clip=1.0),
        ...               cohort=5, num_clients=50, rounds=3)
        >>> wire, _ = ClipStage(dp).encode({"w": torch.tensor([3.0, 4.0])}, {}, torch.Generator())
        >>> wire["w"]
        tensor([0.6000, 0.8000])
    """

    dp: ClientDP
    name = "dp"
    encodes = True
    takes_sum = True  # the sensitivity bound holds for the unweighted sum
    summed = (UNCLIPPED,)

    def signals(self, delta: Params, generator: torch.Generator) -> dict[str, float]:
        bit = 1.0 if l2_norm(delta) <= self.dp.clip else 0.0
        if self.dp.distributed and self.dp.cfg.adaptive_clip:
            share = self.dp.count_stddev / self.dp.cohort**0.5
            bit += float(torch.randn((), generator=generator)) * share
        return {UNCLIPPED: bit}

    def encode(
        self, delta: Params, state: Params, generator: torch.Generator
    ) -> tuple[Params, Params]:
        clipped, _ = clip_update(delta, self.dp.clip)
        if self.dp.distributed:  # cohort shares of variance (z C)^2 / m sum to (z C)^2
            std = self.dp.update_multiplier * self.dp.clip / self.dp.cohort**0.5
            clipped = add_gaussian_noise(clipped, std, generator)
        return clipped, {}

    def finish(self, aggregate: Aggregate, cohort: Cohort) -> tuple[Aggregate, Info]:
        unclipped = aggregate.signals[f"{self.name}/{UNCLIPPED}"]
        mean, info = self.dp.noised_mean(aggregate.delta, unclipped, cohort.generator())
        return replace(aggregate, delta=mean, summed=False, signals={}), info
