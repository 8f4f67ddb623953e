"""Checkpoints: exact round trip without pickle, and every damaged or foreign one refused."""

import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from fedfm.cli import main
from fedfm.config import load_config
from fedfm.runtime.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from fedfm.runtime.run_folder import run_id

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=4",
    "rounds=2",
]


def _checkpoint() -> Checkpoint:
    shared = torch.randn(3, 2)
    return Checkpoint(
        round=7,
        global_params={"b.weight": torch.randn(4, 3), "a.bias": torch.randn(4)},
        strategy_state={
            "m": {"b.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)},
            "bookkeeping": {"seen": torch.tensor([3, 1], dtype=torch.int64)},
        },
        client_states={3: {"c": shared}, 1: {"c": shared}, 0: {}},  # shared memory, an empty one
        backbone="abc123",
        rng=rng_state(),
        personal={2: {"head": torch.randn(2).to(torch.bfloat16)}},
        pipeline_states={1: {"residual": torch.randn(5)}},
        features={"client_dp": {"clip": 0.123456789012345}, "dpsgd": {"steps": [[5, 12], [0, 3]]}},
    )


def _same(a, b) -> bool:
    """Equal values, dtypes and dict orders, recursively."""
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


def test_round_trip_is_exact_and_keeps_orders(tmp_path):
    ckpt = _checkpoint()
    cfg = load_config(None, FAST)
    save_checkpoint(tmp_path, ckpt, cfg=cfg)
    back = load_checkpoint(tmp_path)
    for name in (
        "round",
        "global_params",
        "strategy_state",
        "client_states",
        "backbone",
        "personal",
        "pipeline_states",
        "features",
    ):
        assert _same(getattr(ckpt, name), getattr(back, name)), name
    assert torch.equal(back.rng["torch"], ckpt.rng["torch"])
    # the RNG states restore exactly: every generator draws the same numbers again
    restore_rng(back.rng)
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(ckpt.rng)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2]


def test_a_planted_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run_id(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="not a readable fedfm checkpoint"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-round run of the fast job, checkpointed after each round."""
    out = tmp_path_factory.mktemp("runs")
    args = ["run", "--set", f"output_dir={out}", "--set", "name=base"]
    for item in FAST:
        args += ["--set", item]
    assert main(args) == 0
    return out / "base"


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _edit_manifest(data: bytes) -> bytes:
    """Change the round number in the manifest, keeping the file's length and checksum."""
    where = data.index(b'\\"round\\": 2')
    return data[:where] + b'\\"round\\": 1' + data[where + len(b'\\"round\\": 2') :]


def _corrupt(run_dir, kind):
    path = run_dir / CHECKPOINT_FILE
    data = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif kind == "bit flip in a weight":
        path.write_bytes(_flip(data, len(data) - 100))
    elif kind == "edited manifest":
        path.write_bytes(_edit_manifest(data))
    elif kind == "from another run":
        (run_dir / "run_id").write_text("0123456789abcdef")
    elif kind == "older fedfm":
        path.unlink()
        (run_dir / "checkpoint.pt").write_bytes(b"\x80\x02}q\x00.")


@pytest.mark.parametrize(
    ("kind", "overrides", "message"),
    [
        ("empty", [], "is empty (0 bytes)"),
        ("truncated", [], "is not a readable fedfm checkpoint"),
        ("garbage", [], "is not a readable fedfm checkpoint"),
        ("bit flip in a weight", [], "fails its SHA-256 check"),
        ("edited manifest", [], "fails its SHA-256 check"),
        ("from another run", [], "was copied from another run"),
        ("older fedfm", [], "is from an older fedfm version"),
        (None, ["rounds=1"], "rounds = 1 is below the 2 rounds"),
        # compared with the built job's config (a dataset file's labels filled in)
        (None, ["strategy.name=fedadam"], "strategy.name = 'fedavg' there, 'fedadam' now"),
    ],
)
def test_resume_refuses_with_one_line(finished_run, tmp_path, capsys, kind, overrides, message):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    _corrupt(run_dir, kind)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    args = ["run", "--resume", str(run_dir)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    out = lines[-1]
    assert message in out and out.startswith("error:") and "Traceback" not in str(lines)
    # one line, before any model loads (a config mismatch: after the run's header)
    assert len(lines) == (2 if "strategy.name" in message else 1), lines
    assert str(run_dir) in out  # names the folder or the file in it
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # nothing rewritten: no summary, no model card, no metrics
