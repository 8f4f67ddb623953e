"""A run folder's life: made by a fresh start, checked before a resume, never left as debris.

A run folder ``output_dir/<name>/`` is in one of these states (:func:`folder_state`):

- ``absent`` or ``empty``: a fresh start makes it.
- ``not_started``: a fedfm run folder (it has ``config.toml``) whose run ended before its
  first round did: no round in ``metrics.jsonl``, no checkpoint, no summary. A fresh start
  reuses it; ``--resume`` says there is nothing to resume and gives the command that starts it.
- ``checkpointed``: it has a checkpoint: ``--resume`` continues it; a fresh start refuses it
  (``--overwrite`` replaces it).
- ``unresumable``: rounds were done but there is no checkpoint (``checkpoint.every = 0``, an
  interruption before the first checkpoint, or one from an older fedfm version): both a fresh
  start and ``--resume`` point to ``--overwrite``.
- ``foreign``: not empty and not a fedfm run folder: a fresh start refuses it.

The run id (``run_id``, made once per fresh start and kept on resume) names the run; the
checkpoint carries it, so a checkpoint copied in from another run is refused.

This module imports no torch, so the command line checks a folder in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from fedfm.config import RunConfig, load_config, to_toml
from fedfm.errors import ConfigError, FedFMError
from fedfm.io import atomic_write_text
from fedfm.run_files import (  # noqa: F401 (the run folder's names, public here too)
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    OLD_CHECKPOINT_FILE,
    RUN_ID_FILE,
    SUMMARY_FILE,
)

FolderState = Literal["absent", "empty", "foreign", "not_started", "checkpointed", "unresumable"]


def run_id(run_dir: Path) -> str:
    """The run's id, made when it starts and kept when it resumes (``run_dir/run_id``)."""
    path = run_dir / RUN_ID_FILE
    if not path.exists():
        atomic_write_text(path, secrets.token_hex(8))
    return path.read_text().strip()


def read_run_id(run_dir: Path) -> str | None:
    """The run id kept in ``run_dir`` (None when there is none)."""
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def completed_rounds(run_dir: Path) -> int:
    """The last round ``metrics.jsonl`` records as done (0: none; a torn last line is skipped)."""
    path = run_dir / METRICS_FILE
    done = 0
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                done = max(done, int(json.loads(line).get("round", 0)))
    return done


def folder_state(run_dir: Path) -> FolderState:
    """Where the run in ``run_dir`` stands (see the module docstring)."""
    if not run_dir.exists():
        return "absent"
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        return "empty"
    if not (run_dir / CONFIG_FILE).is_file():
        return "foreign"
    if (run_dir / CHECKPOINT_FILE).is_file():
        return "checkpointed"
    started = (
        (run_dir / SUMMARY_FILE).exists()
        or (run_dir / OLD_CHECKPOINT_FILE).exists()
        or completed_rounds(run_dir) > 0
    )
    return "unresumable" if started else "not_started"


def writable_problem(run_dir: Path, *, field: str = "output_dir") -> str | None:
    """Why ``run_dir`` could not be made or written (None when it can).

    Walks up to the nearest existing folder: every existing part must be a folder, and the
    nearest one writable (``os.access``: also right for root, whom ``chmod`` does not stop).
    """
    path = run_dir.absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return (
            f"{field}: cannot make the run folder {run_dir}: {path} is a file, not a folder. "
            f"Set {field} to a folder (or move the file away)"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        return (
            f"{field}: cannot write the run folder {run_dir}: {path} is not writable by this "
            f"user. Set {field} to a folder you can write to"
        )
    return None


def _config_hint(run_dir: Path, flag: str = "") -> str:
    return f"`fedfm run {run_dir / CONFIG_FILE}{flag}`"


def prepare_run_dir(cfg: RunConfig, *, overwrite: bool) -> Path:
    """Make ``output_dir/<name>`` for a fresh start and write its config and run id.

    A folder whose run ended before its first round is reused; one with rounds done, or one
    that is not a fedfm run folder, is refused unless ``overwrite``.
    """
    run_dir = Path(cfg.output_dir) / cfg.run_name
    if problem := writable_problem(run_dir):
        raise ConfigError(problem)
    state = folder_state(run_dir)
    if state in ("checkpointed", "unresumable", "foreign") and not overwrite:
        raise FedFMError(_taken_message(run_dir, state))
    if state not in ("absent", "empty"):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, to_toml(cfg))
    run_id(run_dir)
    return run_dir


def _taken_message(run_dir: Path, state: FolderState) -> str:
    again = "replace it with --overwrite, or pick another name with --set name=..."
    if state == "checkpointed":
        return (
            f"run folder {run_dir} already exists. Continue it with "
            f"`fedfm run --resume {run_dir}`, {again}"
        )
    if state == "unresumable":
        return (
            f"run folder {run_dir} already exists and holds rounds but no {CHECKPOINT_FILE} to "
            f"resume from: {again}"
        )
    return f"{run_dir} exists and is not a fedfm run folder (no {CONFIG_FILE}): {again}"


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's saved config with ``overrides`` applied (e.g. ``rounds=10`` to go further).

    Refuses, with the command to use instead, a folder that holds nothing to resume.
    """
    state = folder_state(run_dir)
    if state in ("absent", "empty", "foreign"):
        what = "does not exist" if state == "absent" else f"has no {CONFIG_FILE}"
        raise FedFMError(
            f"{run_dir} {what}: is it a fedfm run folder? Give the run's folder, e.g. "
            "`fedfm run --resume runs/<name>`"
        )
    if state == "not_started":
        raise FedFMError(
            f"{run_dir} has no {CHECKPOINT_FILE}: its run ended before its first round, so there "
            f"is nothing to resume. Start it with {_config_hint(run_dir)} (the folder is reused)"
        )
    if state == "unresumable":
        old = (run_dir / OLD_CHECKPOINT_FILE).exists()
        why = (
            f"its {OLD_CHECKPOINT_FILE} is from an older fedfm version and cannot be resumed"
            if old
            else f"it has no {CHECKPOINT_FILE} (checkpoint.every = 0, or it stopped before the "
            "first checkpoint)"
        )
        raise FedFMError(
            f"{run_dir}: {why}, so there is nothing to resume. Start it again with "
            f"{_config_hint(run_dir, ' --overwrite')}"
        )
    if problem := writable_problem(run_dir, field="--resume"):
        raise ConfigError(problem)
    return load_config(run_dir / CONFIG_FILE, overrides)


def interrupted_hint(run_dir: Path) -> str:
    """What a user can do after a run in ``run_dir`` was interrupted."""
    state = folder_state(run_dir)
    if state == "checkpointed":
        return (
            "completed rounds are in metrics.jsonl; continue from the last checkpoint with "
            f"`fedfm run --resume {run_dir}`"
        )
    if state == "unresumable":
        return (
            f"completed rounds are in {run_dir / METRICS_FILE}, but there is no checkpoint to "
            f"resume from; start again with {_config_hint(run_dir, ' --overwrite')}"
        )
    return "it stopped before its first round ended, so nothing was kept; start it again"


@contextlib.contextmanager
def new_run_dir(cfg: RunConfig, *, overwrite: bool) -> Iterator[Path]:
    """:func:`prepare_run_dir` for a start that may fail: the run folder is removed again
    when the start made it and fails (or is interrupted) before its first round ends.

    A folder that existed before is kept. An interruption is re-raised with a hint of what to
    do next (:func:`interrupted_hint`).

    Example:
        >>> with new_run_dir(cfg, overwrite=False) as run_dir:  # doctest: +SKIP
        ...     execute(cfg, run_dir=run_dir)
    """
    run_dir = Path(cfg.output_dir) / cfg.run_name
    made = _first_missing(run_dir)
    run_dir = prepare_run_dir(cfg, overwrite=overwrite)
    try:
        yield run_dir
    except BaseException as err:
        if made is not None and folder_state(run_dir) == "not_started":
            _remove(run_dir, up_to=made)
        if isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt(interrupted_hint(run_dir)) from None
        raise


@contextlib.contextmanager
def resumed_run(run_dir: Path) -> Iterator[Path]:
    """Around a resume: an interruption is re-raised with a hint of what to do next."""
    try:
        yield run_dir
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_hint(run_dir)) from None


def _remove(run_dir: Path, *, up_to: Path) -> None:
    """Remove ``run_dir``, then its parents up to ``up_to`` while they are empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir.absolute().parent
    while folder != up_to.parent and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None: it exists)."""
    if path.exists():
        return None
    missing = path.absolute()
    while not missing.parent.exists():
        missing = missing.parent
    return missing
