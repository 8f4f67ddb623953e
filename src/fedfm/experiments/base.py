"""An experiment: a named set of arms (configs), extra measurements, and a report.

Each arm is the default config plus ``--set``-style overrides, so every number in a
report comes from a run whose resolved ``config.toml`` sits beside its metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfm.config import RunConfig
from fedfm.registry import Registry

# the tiny grid of every text experiment's --quick version (a smoke test, not a result)
QUICK_TEXT = (
    "rounds=2",
    "data.num_clients=4",
    "data.max_train_examples=160",
    "data.max_test_examples=60",
    "checkpoint.every=0",
)


@dataclass(frozen=True)
class Arm:
    """One run of an experiment.

    Attributes:
        name: unique within the experiment; the run's folder name.
        overrides: ``key=value`` config overrides on top of the defaults.
        labels: what distinguishes the arm (``{"init": "random", "alpha": 0.1, "seed": 1}``);
            reports group and average by them.
    """

    name: str
    overrides: tuple[str, ...]
    labels: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArmResult:
    """A finished arm: its resolved config, every round's record and the run summary."""

    arm: Arm
    config: RunConfig
    records: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def labels(self) -> Mapping[str, Any]:
        return self.arm.labels


class Experiment(ABC):
    """Subclasses define the arms, optional extra measurements and the report."""

    name: str = ""
    title: str = ""

    @abstractmethod
    def arms(self, quick: bool) -> list[Arm]:
        """The runs, full or (``quick``) a tiny version for smoke tests."""

    def measure(self, quick: bool, work_dir: Path) -> dict[str, Any]:
        """Measurements that are not federated runs (Hessian spectra, peak memory)."""
        del quick, work_dir
        return {}

    @abstractmethod
    def report(
        self,
        results: list[ArmResult],
        measurements: Mapping[str, Any],
        out_dir: Path,
        *,
        quick: bool,
    ) -> str:
        """Write the plots into ``out_dir`` and return the report's markdown body."""


EXPERIMENTS: Registry[type[Experiment]] = Registry("experiment")
