"""Federated strategies: one algorithm per module, both halves in one class."""

from fedfm.strategies import (  # noqa: F401  (registers them)
    baselines,
    fedavg,
    fedopt,
    flora,
    scaffold,
)
from fedfm.strategies.base import STRATEGIES, LocalHooks, Strategy, Update

__all__ = ["STRATEGIES", "LocalHooks", "Strategy", "Update"]
