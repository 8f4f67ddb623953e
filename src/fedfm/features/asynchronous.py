"""Asynchronous rounds (``[asynchronous]``, FedBuff): what the config may combine them with,
the server's buffer and clock between steps (saved in checkpoints), and each step's
``staleness``, ``arrived_at`` and ``sim_clock`` entries. The driver is
:mod:`fedfm.runtime.asynchronous`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    import torch

    from fedfm.runtime.fedbuff import FedBuffServer
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState

SCHEDULES = ("constant", "polynomial", "hinge")  # fedfm.runtime.fedbuff.SCHEDULES (a test checks)

# what an asynchronous run refuses, as (flat key, is it set?, why, the fix)
_REFUSED = (
    (
        "privacy.noise",
        lambda v: v == "distributed",
        "each client's share of distributed noise assumes a whole cohort reports together, "
        "and a FedBuff step takes whoever arrives",
        "privacy.noise = 'central' (or 'none')",
    ),
    (
        "privacy.adaptive_clip",
        bool,
        "the adaptive clip norm's noised count is not accounted for FedBuff's steps yet",
        "privacy.adaptive_clip = false",
    ),
    (
        "secagg.enabled",
        bool,
        "secure aggregation needs a synchronous cohort that masks and unmasks together",
        "secagg.enabled = false",
    ),
    (
        "system.deadline",
        lambda v: v > 0,
        "a round has no deadline in FedBuff: slow clients arrive later and count less",
        "system.deadline = 0",
    ),
    (
        "simulation.parallel_clients",
        lambda v: v > 1,
        "clients are dispatched one at a time from the version they receive",
        "simulation.parallel_clients = 0",
    ),
    (
        "split.enabled",
        bool,
        "a split client trains through the server's half of the model, which a stale client "
        "would have to find at the version it started from",
        "split.enabled = false",
    ),
    (
        "distill.enabled",
        bool,
        "distillation rebuilds each member's model as the previous global params plus its "
        "delta, which a stale (and staleness-weighted) update is not",
        "distill.enabled = false",
    ),
)


@register
class Asynchronous(Feature):
    """FedBuff's server state between steps: the clock, the version, the clients in flight
    (with their trained updates) and the clients to replace at the next step."""

    name = "asynchronous"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.server: FedBuffServer[Any] | None = None
        self.buffer = 0  # K, resolved
        self.concurrency = 0  # resolved
        self.eligible: list[int] = []  # clients that train (not left out by their profile)
        self.pending = 0  # clients whose updates the last step applied, replaced at the next
        self._saved: dict[str, Any] = {}  # a checkpoint's state, until its tensors come

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.asynchronous.enabled

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        for key in ("buffer", "concurrency", "staleness_a", "staleness_b"):
            value = flat[f"asynchronous.{key}"]
            if value < 0:
                problems.append(f"asynchronous.{key} = {value!r} must be >= 0")
        schedule = flat["asynchronous.staleness"]
        if schedule not in SCHEDULES:
            problems.append(f"asynchronous.staleness = {schedule!r} is not one of {SCHEDULES}")
        buffer, concurrency = flat["asynchronous.buffer"], flat["asynchronous.concurrency"]
        if buffer > 0 and concurrency > 0 and buffer > concurrency:
            problems.append(
                f"asynchronous.buffer = {buffer} > asynchronous.concurrency = {concurrency}: a "
                "server step would wait for more updates than clients train at once; lower "
                "asynchronous.buffer or raise asynchronous.concurrency"
            )
        if not flat["asynchronous.enabled"]:
            return problems
        for key, bad, why, fix in _REFUSED:
            if key in flat and bad(flat[key]):  # (a key another version may not have)
                problems.append(
                    f"asynchronous.enabled = true with {key} = {flat[key]!r}: {why}; set {fix} "
                    "or asynchronous.enabled = false"
                )
        return problems

    def setup(self, job: Job) -> None:
        from fedfm.runtime.fedbuff import FedBuffServer
        from fedfm.runtime.simulation import plan_work

        _check_strategy(job)
        cohort = job.strategy.cohort_size(len(job.federation))
        self.concurrency, self.buffer = resolved(self.cfg, cohort)
        self.eligible = [c.id for c in job.federation.clients if not plan_work(job, c).left_out]
        if self.concurrency > len(self.eligible):
            raise ConfigError(
                f"asynchronous.concurrency = {self.concurrency} but only {len(self.eligible)} "
                "clients can train (the federation, less those system.min_rank leaves out): "
                "lower asynchronous.concurrency"
            )
        if self.buffer > self.concurrency:
            raise ConfigError(
                f"asynchronous.buffer = {self.buffer} (0: the cohort size) > "
                f"asynchronous.concurrency = {self.concurrency}: lower asynchronous.buffer"
            )
        self.server = FedBuffServer(size=self.buffer)

    def banner(self, job: Job) -> list[str]:
        cfg = self.cfg.asynchronous
        weight = {
            "constant": "s = 1",
            "polynomial": f"s = (1 + τ)^-{cfg.staleness_a:g}",
            "hinge": f"s = 1 if τ <= {cfg.staleness_b:g} else 1 / ({cfg.staleness_a:g} "
            f"(τ - {cfg.staleness_b:g}) + 1)",
        }[cfg.staleness]
        return [
            f"asynchronous (FedBuff): {self.concurrency} clients in flight, a server step "
            f"every {self.buffer} updates, staleness weight {weight}"
        ]

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        from fedfm.runtime.asynchronous import AsyncIntake

        if not isinstance(intake, AsyncIntake):  # a synchronous round (run_round called directly)
            return {}
        staleness = list(intake.staleness)
        return {
            "staleness": staleness,
            "arrived_at": [float(t) for t in intake.arrived_at],
            "staleness_max": max(staleness, default=0),
            "sim_clock": float(intake.sim_clock),
        }

    def summary(self, job: Job, records: list[Record]) -> Record:
        stale = [t for r in records for t in r.get("staleness", [])]
        return {
            "asynchronous_updates": len(stale),
            "staleness_mean": sum(stale) / len(stale) if stale else 0.0,
            "sim_clock": records[-1].get("sim_clock") if records else None,
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        from fedfm.runtime.asynchronous import server_state

        if self.server is None:
            return {}
        meta, _ = server_state(self.server)
        return {"server": meta, "pending": self.pending}

    def tensor_state(self) -> dict[str, torch.Tensor]:
        from fedfm.runtime.asynchronous import server_state

        return server_state(self.server)[1] if self.server is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved = state

    def load_tensor_state(self, tensors: dict[str, torch.Tensor]) -> None:
        from fedfm.runtime.asynchronous import load_server

        saved = self._saved
        if not saved:
            raise ConfigError(
                "this checkpoint holds no asynchronous server state (written by a run with "
                "asynchronous.enabled = false?): resume with the run's own config"
            )
        self.server = load_server(self.buffer, saved["server"], tensors)
        self.pending = int(saved["pending"])


def resolved(cfg: RunConfig, cohort: int) -> tuple[int, int]:
    """``(concurrency, buffer K)`` with their 0s resolved: the cohort size, and K at most the
    concurrency.

    Example:
        >>> from fedfm.config import load_config
        >>> resolved(load_config(None, ["asynchronous.concurrency=8"]), cohort=5)
        (8, 5)
    """
    concurrency = cfg.asynchronous.concurrency or cohort
    return concurrency, cfg.asynchronous.buffer or min(cohort, concurrency)


def _check_strategy(job: Job) -> None:
    """Refuse, by capability, a strategy that FedBuff's buffer cannot serve."""
    strategy, name = job.strategy, job.cfg.strategy.name
    why = []
    if strategy.needs:
        why.append(f"reads {sorted(strategy.needs)} of each update besides the mean delta")
    if not strategy.communicates:
        why.append("is a no-federation reference (nothing travels)")
    if strategy.pooled:
        why.append("trains one pooled client")
    if type(strategy).personalized:  # a model per client (strategy.personal keeps tensors)
        why.append("keeps a model per client")
    if why:
        raise ConfigError(
            f"asynchronous.enabled = true with strategy.name = {name!r}, which "
            f"{' and '.join(why)}: a FedBuff step applies staleness-weighted deltas through "
            "the mean delta only; use fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad"
        )
