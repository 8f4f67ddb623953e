"""Shared test helpers."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedfm.config import load_config
from fedfm.runtime.run import execute, prepare_run_dir


def _full_and_resumed(
    overrides: list[str], stop_after: int
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Run ``overrides`` once straight through (``name=full``) and once stopped after round
    ``stop_after`` and resumed (``name=cut``): ``(full summary, resumed summary, cut dir)``."""
    full_cfg = load_config(None, [*overrides, "name=full"])
    full = execute(full_cfg, run_dir=prepare_run_dir(full_cfg, overwrite=False))
    cut_cfg = load_config(None, [*overrides, "name=cut"])
    cut_dir = prepare_run_dir(cut_cfg, overwrite=False)
    execute(cut_cfg, run_dir=cut_dir, stop_after=stop_after)
    resumed = execute(cut_cfg, run_dir=cut_dir, resume=True)
    return full, resumed, cut_dir


@pytest.fixture
def full_and_resumed() -> Callable[[list[str], int], tuple[dict[str, Any], dict[str, Any], Path]]:
    return _full_and_resumed


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{kind: folder}`` of tiny random-init HF models (see ``tests/tiny_models.py``), shared
    by the whole session: copy a folder (``shutil.copytree``) before changing it."""
    from tiny_models import KINDS, make_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: make_tiny_model(kind, root / kind) for kind in KINDS}
