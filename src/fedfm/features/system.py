"""System heterogeneity (``[system]``): per-client LoRA ranks, trainable layers, local steps
and speeds, and a per-round deadline on a simulated clock (see :mod:`fedfm.runtime.profiles`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig, SystemConfig
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    from fedfm.data.federation import ClientData
    from fedfm.runtime.job import Job
    from fedfm.runtime.profiles import ResourceProfile
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState, Work


@register
class System(Feature):
    """Resource profiles drawn per client (seeded); the round plans each client's work from
    its profile (:func:`fedfm.runtime.simulation.plan_work`)."""

    name = "system"
    before_reduction = True

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.profiles: list[ResourceProfile] = []
        self.clock = 0.0  # the simulated time of the rounds so far (sim_clock)

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.system != SystemConfig()

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        ranks, rank = flat["system.ranks"], flat["adapter.rank"]
        if ranks and flat["adapter.method"] != "lora":
            problems.append(
                f"system.ranks = {list(ranks)} gives clients LoRA ranks, but adapter.method = "
                f"{flat['adapter.method']!r}: set adapter.method = 'lora' or system.ranks = []"
            )
        if any(not 1 <= r <= rank for r in ranks):
            problems.append(
                f"system.ranks = {list(ranks)} must lie in [1, adapter.rank = {rank}]: the model "
                "holds adapter.rank components and a client trains the first r of them"
            )
        if ranks and flat["adapter.freeze_a"]:
            problems.append(
                "system.ranks with adapter.freeze_a = true: a frozen A keeps every component "
                "live, so a client cannot train only its first r; drop one of the two"
            )
        for key in ("system.layers", "system.steps"):
            if any(v < 1 for v in flat[key]):
                problems.append(f"{key} = {list(flat[key])} must all be >= 1")
        if any(not v > 0 for v in flat["system.speeds"]):
            problems.append(f"system.speeds = {list(flat['system.speeds'])} must all be > 0")
        return problems

    def setup(self, job: Job) -> None:
        from fedfm.runtime.profiles import sample_profiles

        self.profiles = sample_profiles(len(job.federation), self.cfg.system, seed=self.cfg.seed)

    def work(self, job: Job, client: ClientData, full: int) -> Work:
        """What ``client`` does this round from its profile: its rank, layers and steps (a
        round of ``full`` steps unless its profile says otherwise), within the deadline."""
        from fedfm.runtime.profiles import steps_within_deadline
        from fedfm.runtime.simulation import Work

        system = self.cfg.system
        profile = self.profiles[client.id]
        default, full = full, profile.steps or full
        rank = profile.rank if 0 < profile.rank < job.lora_rank else 0
        steps = steps_within_deadline(full, profile.speed, system)
        override = steps if steps != default else 0
        work = Work(rank, steps, full, profile.speed, profile.layers, override_steps=override)
        if system.min_rank and (rank or job.lora_rank) < system.min_rank:
            reason = f"rank {rank} < system.min_rank = {system.min_rank}"
            return replace(work, left_out=reason, receives=False)
        if steps == 0:
            reason = f"straggler: {full} steps at speed {profile.speed} miss the deadline"
            return replace(work, left_out=f"{reason} of {system.deadline}")
        return work

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        if not (self.cfg.system.speeds or self.cfg.system.deadline):
            return {}
        # a synchronous round lasts as long as its slowest client, or until the deadline
        # when a straggler is dropped or cut short (the server waits for it until then)
        waited = self.cfg.system.deadline if intake.stragglers else 0.0
        self.clock += max(intake.sim_time, waited)
        return {
            "stragglers": intake.stragglers,
            "sim_time": intake.sim_time,
            "sim_clock": self.clock,
        }

    def state_dict(self) -> dict[str, Any]:
        timed = self.cfg.system.speeds or self.cfg.system.deadline
        return {"sim_clock": self.clock} if timed else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock = float(state.get("sim_clock", 0.0))
