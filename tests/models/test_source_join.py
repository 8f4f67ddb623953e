"""``fedfm join`` with a model folder: a client whose copy of the folder lies elsewhere joins
with ``--model``; a client with other weights is refused by the backbone hash."""

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console
from tiny_models import make_tiny_model

from fedfm.config import load_config
from fedfm.runtime.remote.server import remote_backend
from fedfm.runtime.run import execute, prepare_run_dir


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))  # folder digests land here


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _join(port: int, cid: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fedfm.cli", "join", "--server", f"localhost:{port}"]
    cmd += ["--id", cid, "--insecure", "--state-dir", "none", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_clients_join_with_their_own_copy_of_the_folder(tiny_model_dirs, tmp_path: Path) -> None:
    folder = tiny_model_dirs["gpt2"]
    copy = shutil.copytree(folder, tmp_path / "client_copy")
    other = make_tiny_model("gpt2", tmp_path / "other_weights", seed=7)
    port = _port()
    cfg = load_config(
        None,
        [
            f"model.name={folder}",
            "data.dataset=trec6",
            "data.max_train_examples=80",
            "data.max_test_examples=40",
            "data.num_clients=2",
            "data.min_client_size=10",
            "data.max_length=24",
            "strategy.fraction=1.0",
            "rounds=1",
            "checkpoint.every=0",
            'remote.clients=["c0", "c1"]',
            f"remote.address=localhost:{port}",
            "remote.insecure=true",
            "remote.deadline=120",
            f"output_dir={tmp_path / 'runs'}",
            "name=remote",
        ],
    )
    run_dir = prepare_run_dir(cfg, overwrite=False)
    out: dict = {}

    def serve() -> None:
        try:
            out["summary"] = execute(
                cfg, run_dir=run_dir, console=Console(quiet=True), backend=remote_backend
            )
        except BaseException as err:  # surfaced below
            out["error"] = err

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    stranger = _join(port, "c1", "--model", str(other))  # same config, other weights
    assert stranger.wait(timeout=180) != 0
    log = stranger.communicate()[0].decode()
    assert "is not the server's" in log, log  # refused for its backbone
    clients = [_join(port, "c0", "--model", str(copy)), _join(port, "c1")]
    thread.join(timeout=300)
    logs = [p.communicate(timeout=60)[0].decode() for p in clients]
    assert "error" not in out and not thread.is_alive(), (out, logs)
    assert all(p.returncode == 0 for p in clients), logs
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["participants"] == ["c0", "c1"]
