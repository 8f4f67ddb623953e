"""Sample-level differential privacy (``[dpsgd]``): DP-SGD in every client's local trainer
(Opacus, :mod:`fedfm.privacy.dpsgd`); this module counts each client's steps and reports
the worst client's epsilon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState
    from fedfm.strategies.base import Update


@register
class DPSGD(Feature):
    name = "dpsgd"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.steps: dict[int, int] = {}  # DP-SGD steps each client has taken

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.dpsgd.enabled

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        if flat["dpsgd.enabled"] and flat["dpsgd.noise_multiplier"] == 0:
            problems.append("dpsgd.enabled = true needs dpsgd.noise_multiplier > 0")
        if flat["dpsgd.enabled"] and flat["system.layers"]:
            problems.append(
                "dpsgd.enabled = true with system.layers: clients that freeze layers are not "
                "supported under DP-SGD yet; set system.layers = []"
            )
        if flat["dpsgd.enabled"] and flat["client.bucket_by_length"]:
            problems.append(
                "dpsgd.enabled = true with client.bucket_by_length = true: DP-SGD's accounting "
                "treats each batch as a random sample of the client's data, but length buckets "
                "choose batch-mates by length; set client.bucket_by_length = false"
            )
        return problems

    def received(self, job: Job, client_id: int, update: Update) -> None:
        # spent on training, whether or not the update is kept
        self.steps[client_id] = self.steps.get(client_id, 0) + int(update.metrics["steps"])

    def worst_epsilon(self, job: Job) -> float:
        """The largest sample-level epsilon over the clients that have trained so far."""
        from fedfm.privacy.dpsgd import client_epsilon

        cfg = self.cfg
        return max(
            (
                client_epsilon(
                    cfg.dpsgd,
                    batch_size=cfg.client.batch_size,
                    examples=job.federation[cid].num_examples,
                    steps=n,
                )
                for cid, n in self.steps.items()
            ),
            default=0.0,
        )

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        return {"dpsgd_epsilon_max": self.worst_epsilon(job)}

    def summary(self, job: Job, records: list[Record]) -> Record:
        if not records:
            return {}
        return {
            "dpsgd_epsilon_max": records[-1].get("dpsgd_epsilon_max"),
            "dpsgd_delta": self.cfg.dpsgd.delta,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"steps": sorted(self.steps.items())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = {int(c): int(n) for c, n in state.get("steps", [])}
