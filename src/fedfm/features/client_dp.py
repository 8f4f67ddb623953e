"""Client-level differential privacy (``[privacy]``): DP-FedAvg's clip and noise, the
accountant's budget, a privacy ledger in the run folder, and the adaptive clip norm kept
in checkpoints. The mechanism is :mod:`fedfm.privacy.client_dp`; its clip and noise are
stages of the update chain (:func:`fedfm.update.chain.build_chain`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    from fedfm.privacy.client_dp import ClientDP
    from fedfm.report.metrics import MetricsLog
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState

LEDGER_FILE = "privacy_ledger.jsonl"  # epsilon spent after every round


@register
class ClientLevelDP(Feature):
    name = "client_dp"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.dp: ClientDP | None = None
        self.ledger: MetricsLog | None = None

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.privacy.noise != "none"

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        noise, robust = flat["privacy.noise"], flat["robust.aggregator"]
        problems = []
        if noise != "none" and not (
            flat["privacy.noise_multiplier"] or flat["privacy.target_epsilon"]
        ):
            problems.append(
                f"privacy.noise = {noise!r} needs privacy.noise_multiplier > 0 or "
                "privacy.target_epsilon > 0 (the noise is derived from the budget)"
            )
        if noise != "none" and robust != "mean":
            problems.append(
                f"privacy.noise = {noise!r} with robust.aggregator = {robust!r}: the "
                "accountant's guarantee is for a noised sum of clipped updates; use "
                "robust.norm_bound instead"
            )
        return problems

    def setup(self, job: Job) -> None:
        from fedfm.privacy.client_dp import ClientDP

        cfg, clients = self.cfg, len(job.federation)
        cohort, sample_rate = job.strategy.cohort_size(clients), None
        if cfg.asynchronous.enabled:  # a step's noised mean is over FedBuff's buffer of K
            from fedfm.features.asynchronous import resolved

            cohort = resolved(cfg, cohort)[1]
            sample_rate = 1.0  # no amplification by sampling: see docs/async.md
        try:
            self.dp = ClientDP(
                cfg.privacy,
                cohort=cohort,
                num_clients=clients,
                rounds=cfg.rounds,
                sample_rate=sample_rate,
            )
        except ValueError as err:  # settings that only fail for this cohort (adaptive clip)
            raise ConfigError(str(err)) from None

    def rounds_allowed(self) -> int | None:
        return self.dp.budget.rounds if self.dp is not None else None

    def banner(self, job: Job) -> list[str]:
        assert self.dp is not None
        budget, cfg = self.dp.budget, self.cfg
        target = cfg.privacy.target_epsilon
        lines = [
            f"client-level DP ({cfg.privacy.noise} noise): noise multiplier "
            f"{budget.noise_multiplier:.4g}, sample rate {budget.sample_rate:.3g}, epsilon "
            f"{budget.epsilon(job.rounds):.3g} after {job.rounds} rounds at delta {budget.delta:g}"
            + (f" (budget {target:g})" if target else "")
        ]
        if job.rounds < cfg.rounds:
            lines.append(
                f"[yellow]the privacy budget allows {job.rounds} of {cfg.rounds} rounds: the run "
                "stops there (privacy.over_budget = 'stop')[/]"
            )
        return lines

    def start(self, job: Job, run_dir: Path, resumed: int) -> None:
        from fedfm.report.metrics import MetricsLog

        path = run_dir / LEDGER_FILE
        if resumed and path.exists():
            MetricsLog(path).truncate_after(resumed)
        self.ledger = MetricsLog(path)

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        assert self.dp is not None
        return {"epsilon": self.dp.epsilon(plan.round)}

    def after_round(self, job: Job, record: Record) -> None:
        """One line of the privacy ledger: what the round spent and under which mechanism."""
        assert self.dp is not None and self.ledger is not None
        budget = self.dp.budget
        self.ledger.append(
            {
                "round": record["round"],
                "epsilon": record["epsilon"],
                "delta": budget.delta,
                "noise_multiplier": budget.noise_multiplier,
                "sample_rate": budget.sample_rate,
                "clip": record.get("dp_clip"),
                "noise": self.cfg.privacy.noise,
                "accountant": budget.kind,
                "target_epsilon": self.cfg.privacy.target_epsilon,
            }
        )

    def summary(self, job: Job, records: list[Record]) -> Record:
        assert self.dp is not None
        budget = self.dp.budget
        return {
            "epsilon": records[-1].get("epsilon") if records else 0.0,
            "delta": budget.delta,
            "noise_multiplier": budget.noise_multiplier,
            "sample_rate": budget.sample_rate,
            "accountant": budget.kind,
            "stopped_by_budget": job.rounds < self.cfg.rounds,
        }

    def state_dict(self) -> dict[str, Any]:
        return self.dp.state_dict() if self.dp is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.dp is not None and state:
            self.dp.load_state_dict(state)
