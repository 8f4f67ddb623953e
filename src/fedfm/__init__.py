"""fedfm: federated learning for and with foundation models.

The public API, loaded on first use (``import fedfm`` itself imports neither torch nor
transformers)::

    import fedfm

    cfg = fedfm.load_config("job.toml", ["rounds=3"])
    summary = fedfm.execute(cfg, run_dir=fedfm.prepare_run_dir(cfg, overwrite=False))

Extension points, each a registry (one module plus one registry line per entry):
``STRATEGIES`` (server and client halves of an algorithm), ``TASKS``, ``DATASETS`` (the
built-in datasets), ``TRANSPORTS`` (how the clients are reached: ``backend``),
``FEATURES`` (optional features such as DP or attacks) and the update chain's ``Stage``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # configs and runs
    "RunConfig": "fedfm.config",
    "load_config": "fedfm.config",
    "config_from_dict": "fedfm.config",
    "to_toml": "fedfm.config",
    "execute": "fedfm.runtime.run",
    "prepare_run_dir": "fedfm.runtime.run",
    "build_job": "fedfm.runtime.job",
    "Job": "fedfm.runtime.job",
    "run_round": "fedfm.runtime.simulation",
    "RoundState": "fedfm.runtime.simulation",
    # extension points
    "STRATEGIES": "fedfm.strategies",
    "Strategy": "fedfm.strategies",
    "Update": "fedfm.strategies",
    "LocalHooks": "fedfm.strategies",
    "TASKS": "fedfm.tasks",
    "Task": "fedfm.tasks",
    "DATASETS": "fedfm.datasets",
    "TRANSPORTS": "fedfm.runtime.transports",
    "Transport": "fedfm.runtime.simulation",
    "FEATURES": "fedfm.features",
    "Feature": "fedfm.features",
    "Stage": "fedfm.update.stage",
    "Chain": "fedfm.update.chain",
    # the client half
    "ClientContext": "fedfm.client.context",
    "ClientState": "fedfm.client.state",
    "Upload": "fedfm.client.fit",
    "fit": "fedfm.client.fit",
    # errors
    "FedFMError": "fedfm.errors",
    "ConfigError": "fedfm.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fedfm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
