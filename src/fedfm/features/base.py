"""The shape of an optional feature, and the ordered list of them.

A feature is one module that registers one :class:`Feature` subclass. The job keeps an
instance of every feature whose :meth:`Feature.active` holds for the config, in
registration order, and the run calls their hooks at fixed points: the config check, the
job's set-up, each arrival, each round's record and evaluation, the checkpoint, the summary
and the files written at the end. Nothing outside the feature's module names it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from fedfm.client.context import ClientContext
    from fedfm.config import RunConfig
    from fedfm.models.params import Params
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState
    from fedfm.strategies.base import Update

Record = dict[str, Any]


class Feature:
    """One optional feature; every hook is a no-op unless the feature overrides it.

    Attributes:
        name: its key in checkpoints and in :meth:`fedfm.runtime.job.Job.feature`.
        before_reduction: its round entries come before the update chain's (a record's key
            order is part of ``metrics.jsonl``).
    """

    name: ClassVar[str] = ""
    before_reduction: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        self.cfg = cfg

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        """Whether ``cfg`` switches this feature on."""
        raise NotImplementedError

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        """Settings of this feature that are wrong whatever the data (``flat``: every key of
        the config, dotted); checked with every config, active or not."""
        return []

    # ------------------------------------------------------------------ set-up
    def prepare(self, job: Job) -> None:
        """After the data is encoded and the model loaded, before the trainable params are
        read (synthetic examples, a server warm-up, poisoned copies)."""

    def setup(self, job: Job) -> None:
        """Once the strategy exists (what depends on the cohort; checks that need it)."""

    def client_context(self, ctx: ClientContext) -> ClientContext:
        """What this feature changes in local training (an attacker's data or delta)."""
        return ctx

    def rounds_allowed(self) -> int | None:
        """The most rounds this feature lets the run take (``None``: no limit)."""
        return None

    def banner(self, job: Job) -> list[str]:
        """Lines the run prints once the job is built."""
        return []

    # ------------------------------------------------------------------ rounds
    def start(self, job: Job, run_dir: Path, resumed: int) -> None:
        """The run begins (or resumes after round ``resumed``) in ``run_dir``."""

    def received(self, job: Job, client_id: int, update: Update) -> None:
        """A client's update arrived, before it is checked (kept or not)."""

    def after_aggregate(
        self, job: Job, state: RoundState, previous: Params, updates: list[Update]
    ) -> None:
        """The round's updates are aggregated into ``state.global_params`` (``previous``: the
        params the cohort started from, so a member's model is ``previous + update.delta``);
        the feature may replace ``state.global_params`` (distillation into the new global
        model), before the record and the evaluation. Only rounds with updates call it."""

    def protocol_bytes(self, job: Job, plan: RoundPlan, intake: RoundIntake) -> tuple[int, int]:
        """Bytes this feature's own messages carried this round beyond the params and the
        updates, ``(up, down)``; counted into the round's ``bytes_up``, ``bytes_down`` and
        ``cum_bytes`` (split fine-tuning's activations and gradients). Asked once per round,
        before :meth:`round_record`."""
        return 0, 0

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        """This feature's entries in the round's record."""
        return {}

    def evaluate(self, job: Job, state: RoundState) -> Record:
        """This feature's entries in a round's evaluation (run when the round evaluates)."""
        return {}

    def after_round(self, job: Job, record: Record) -> None:
        """The round's record is written (a privacy ledger's line)."""

    def summary(self, job: Job, records: list[Record]) -> Record:
        """This feature's entries in ``summary.json``."""
        return {}

    def finish(self, job: Job, state: RoundState, run_dir: Path) -> None:
        """The run has finished (``summary.json`` is written, the model card not yet): files
        of its own in ``run_dir`` (generated examples)."""

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs back (JSON values); empty: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def tensor_state(self) -> dict[str, torch.Tensor]:
        """Tensors a resumed run needs back (saved as ``feature/<name>/<key>``; asynchronous
        rounds: the updates in flight); empty: none."""
        return {}

    def load_tensor_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take back :meth:`tensor_state`'s tensors (called after :meth:`load_state_dict`)."""
        del tensors


FEATURES: list[type[Feature]] = []  # in registration order: the order of every hook


def register(cls: type[Feature]) -> type[Feature]:
    """Class decorator: add a feature (once) at the end of :data:`FEATURES`."""
    if any(f.name == cls.name for f in FEATURES):
        raise ValueError(f"feature {cls.name!r} is already registered")
    FEATURES.append(cls)
    return cls


def config_problems(flat: dict[str, Any]) -> list[str]:
    """Every feature's :meth:`Feature.problems` for one config."""
    return [p for cls in FEATURES for p in cls.problems(flat)]


def start_features(cfg: RunConfig, **options: Any) -> tuple[Feature, ...]:
    """An instance of every feature ``cfg`` switches on, in registration order."""
    return tuple(cls(cfg, **options) for cls in FEATURES if cls.active(cfg))


def each(features: tuple[Feature, ...], hook: Callable[[Feature], Record]) -> Record:
    """The records ``hook`` returns for every feature, merged in order."""
    out: Record = {}
    for feature in features:
        out.update(hook(feature))
    return out
