"""Client-level differential privacy: DP-FedAvg (McMahan et al., ICLR 2018) with optional
adaptive clipping (Andrew et al., NeurIPS 2021).

Both halves are the :class:`ClipStage` of the update chain. Client half: scale the update to
L2 norm ``<= C``, report whether it was already inside (the unclipped bit) and, with
distributed noise, add this client's share of the noise. Server half (``finish``, through
:meth:`ClientDP.noised_mean`): the *unweighted* sum of the clipped updates (an
example-weighted mean would let one client's weight break the sensitivity bound), which the
chain's reduction provides, plus the central noise, over the fixed cohort size; then the
adaptive clip norm moves toward the target quantile of update norms.

The accountant sees one subsampled Gaussian mechanism per round with multiplier ``z`` at
sample rate ``cohort / clients``. With adaptive clipping the update's noise is raised so
that it and the noised count together cost exactly ``z``. Distributed noise only adds up to
the full amount when every cohort member reports: a dropped client's share is missing.
"""

from __future__ import annotations

import torch

from fedfm.config import PrivacyConfig
from fedfm.models.params import Params
from fedfm.privacy.accountant import Budget, plan_budget
from fedfm.privacy.clipping import next_clip, split_noise_multiplier
from fedfm.privacy.noise import add_gaussian_noise

UNCLIPPED = "unclipped"


class ClientDP:
    """The server's side of client-level DP: the budget, the clip norm, the noised mean."""

    def __init__(
        self,
        cfg: PrivacyConfig,
        *,
        cohort: int,
        num_clients: int,
        rounds: int,
        sample_rate: float | None = None,
    ) -> None:
        """``cohort``: the fixed denominator of the noised mean (a round's cohort, FedBuff's
        buffer K); ``sample_rate``: the accountant's (default ``cohort / num_clients``)."""
        self.cfg = cfg
        self.cohort = cohort
        self.budget: Budget = plan_budget(
            noise_multiplier=cfg.noise_multiplier,
            target_epsilon=cfg.target_epsilon,
            sample_rate=cohort / num_clients if sample_rate is None else sample_rate,
            rounds=rounds,
            delta=cfg.delta,
            kind=cfg.accountant,
            over_budget=cfg.over_budget,
        )
        self.count_stddev = cfg.count_noise or cohort / 20
        z = self.budget.noise_multiplier
        self.update_multiplier = (
            split_noise_multiplier(z, self.count_stddev) if cfg.adaptive_clip else z
        )
        self.clip = cfg.clip

    @property
    def distributed(self) -> bool:
        return self.cfg.noise == "distributed"

    def noised_mean(
        self, total: Params, unclipped: float, generator: torch.Generator
    ) -> tuple[Params, dict[str, float]]:
        """``(noised mean, what to record)`` from the sum of the clipped deltas and of the
        unclipped bits; moves the clip norm."""
        std = self.update_multiplier * self.clip
        if not self.distributed:
            total = add_gaussian_noise(total, std, generator)
        mean = {k: v / self.cohort for k, v in total.items()}
        info = {"dp_clip": self.clip, "dp_noise_std": std / self.cohort}
        if self.cfg.adaptive_clip:
            count = unclipped
            if not self.distributed:
                count += float(torch.randn((), generator=generator)) * self.count_stddev
            info["dp_unclipped_fraction"] = count / self.cohort
            self.clip = next_clip(
                self.clip, count / self.cohort, self.cfg.target_quantile, self.cfg.clip_lr
            )
        return mean, info

    def epsilon(self, rounds: int) -> float:
        return self.budget.epsilon(rounds)

    def state_dict(self) -> dict[str, float]:
        return {"clip": self.clip}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.clip = float(state["clip"])
