"""Atomic checkpoints: global params, strategy state, client states, RNG states, round."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm.errors import FedFMError
from fedfm.io import atomic_write_bytes
from fedfm.models.params import Params

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpoint:
    round: int  # the last completed round
    global_params: Params
    strategy_state: dict[str, Params]
    client_states: dict[int, Params]
    backbone: str
    rng: dict[str, Any]
    personal: dict[int, Params] = field(default_factory=dict)
    pipeline_states: dict[int, Params] = field(default_factory=dict)
    privacy_state: dict[str, float] = field(default_factory=dict)  # the adaptive clip norm
    dpsgd_steps: dict[int, int] = field(default_factory=dict)  # DP-SGD steps per client


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically: a crash leaves the previous one intact."""
    buffer = io.BytesIO()
    torch.save(ckpt.__dict__, buffer)
    return atomic_write_bytes(run_dir / CHECKPOINT_FILE, buffer.getvalue())


def load_checkpoint(run_dir: Path) -> Checkpoint:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FedFMError(
            f"{run_dir} has no {CHECKPOINT_FILE}: nothing to resume. Checkpoints are written "
            "every checkpoint.every rounds; run without --resume to start afresh."
        )
    return Checkpoint(**torch.load(path, weights_only=False))
