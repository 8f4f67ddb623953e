"""Check a config before any heavy import, model load or run folder: a typo costs a second.

:func:`preflight` runs in two stages. The first imports no torch: the run folder (can it be
made and written?), ``data.dataset`` and ``data.partition`` (a registry name or a path that
exists), and the files the config names. Only when those pass does the second stage import
the model and strategy registries (torch, transformers: a few seconds) to check
``model.name`` and ``strategy.name``. What needs the data or the model itself (label counts,
model and data kinds, the privacy budget) is checked while the job is built; a start that
fails there leaves no run folder (:func:`~fedfm.runtime.run_folder.new_run_dir`).

Example:
    >>> preflight(load_config(None, ["data.dataset=trec7"]), run_dir=Path("runs/x"))
    Traceback (most recent call last):
    ...
    fedfm.errors.ConfigError: data.dataset = 'trec7' ... Did you mean 'trec6'? ...
"""

from __future__ import annotations

from pathlib import Path

from fedfm.config import RunConfig
from fedfm.errors import ConfigError, FedFMError, closest
from fedfm.run_files import check_can_score
from fedfm.runtime.run_folder import writable_problem


def preflight(cfg: RunConfig, *, run_dir: Path) -> None:
    """Raise one :class:`ConfigError` listing every problem found before loading anything.

    Args:
        cfg: the config about to run.
        run_dir: the run folder it will write (made or resumed).
    """
    problems = [
        p for p in (writable_problem(run_dir), _dataset_problem(cfg), _backend_problem(cfg)) if p
    ]
    problems += _partition_problems(cfg) + _file_problems(cfg) + _privacy_problems(cfg)
    if not problems:  # only now the registries that import torch and transformers
        problems += _model_and_strategy_problems(cfg)
    if problems:
        err = ConfigError("; ".join(problems) if len(problems) == 1 else _listed(problems))
        err.problems = problems
        raise err


def _listed(problems: list[str]) -> str:
    return "cannot start:\n  " + "\n  ".join(problems)


def _dataset_problem(cfg: RunConfig) -> str | None:
    from fedfm.data.source import ACCEPTED, looks_like_path
    from fedfm.datasets import DATASETS

    name = cfg.data.dataset
    if name in DATASETS:
        return None
    if not looks_like_path(name):
        return (
            f"data.dataset = {name!r} is neither a registered dataset "
            f"({', '.join(DATASETS.names())}) nor a path.{closest(name, DATASETS.names())} "
            f"Give a registry name or the path of {ACCEPTED}"
        )
    if not Path(name).expanduser().exists():
        return f"data.dataset = {name!r}: no such file or folder. Give the path of {ACCEPTED}"
    return None


def _partition_problems(cfg: RunConfig) -> list[str]:
    from fedfm.data.partition import PARTITIONS

    try:
        PARTITIONS.get(cfg.data.partition, field="data.partition")
    except ConfigError as err:
        return [str(err)]
    return []


def _file_problems(cfg: RunConfig) -> list[str]:
    """Files the config names must exist (checked where they are read, more closely)."""
    problems = []
    synthetic = cfg.synthetic
    for key, value in (
        ("synthetic.path", synthetic.path),
        ("synthetic.seed_file", synthetic.seed_file),
    ):
        if synthetic.mode != "none" and value and not Path(value).expanduser().is_file():
            problems.append(f"{key} = {value!r}: no such file")
    if cfg.model.init_adapter:  # a finished run's folder (its backbone is checked later)
        try:
            check_can_score(Path(cfg.model.init_adapter).expanduser())
        except FedFMError as err:
            problems.append(f"model.init_adapter = {cfg.model.init_adapter!r}: {err}")
    return problems


def _privacy_problems(cfg: RunConfig) -> list[str]:
    """A budget no noise can meet (the noise is derived from it; the cohort is not needed)."""
    from fedfm.privacy.accountant import epsilon_floor

    privacy = cfg.privacy
    derived = privacy.noise != "none" and privacy.noise_multiplier == 0
    if not (derived and privacy.accountant == "rdp" and privacy.target_epsilon > 0):
        return []
    floor = epsilon_floor(privacy.delta)
    if privacy.target_epsilon > floor:
        return []
    return [
        f"privacy.target_epsilon = {privacy.target_epsilon:g} is too small: at privacy.delta = "
        f"{privacy.delta:g} no amount of noise gets below epsilon {floor:.3g} (rdp accountant). "
        "Raise privacy.target_epsilon or privacy.delta, or set privacy.noise_multiplier instead "
        "of deriving it"
    ]


def _backend_problem(cfg: RunConfig) -> str | None:
    from fedfm.runtime.transports import TRANSPORTS  # light: transports load when opened

    try:
        TRANSPORTS.get(cfg.backend, field="backend")
    except ConfigError as err:
        return str(err)
    return None


def _model_and_strategy_problems(cfg: RunConfig) -> list[str]:
    from fedfm.models.source import check_model_name
    from fedfm.strategies import STRATEGIES
    from fedfm.update.compat import compatibility_problems

    problems = []
    try:
        check_model_name(cfg.model)
    except ConfigError as err:
        problems.append(str(err))
    try:
        strategy = STRATEGIES.get(cfg.strategy.name, field="strategy.name")
    except ConfigError as err:
        problems.append(str(err))
    else:  # what the update chain's stages can serve, read from its capabilities
        problems += compatibility_problems(cfg, strategy)
    return problems
