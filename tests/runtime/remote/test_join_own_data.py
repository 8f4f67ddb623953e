"""``fedfm serve`` on a dataset file, and remote clients that bring their own files (--data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from fedfm.config import load_config
from fedfm.runtime.remote.server import remote_backend
from fedfm.runtime.run import execute, prepare_run_dir

CLIENTS = ["clinic-a", "clinic-b"]
TEXTS = {"flu": "fever and cough", "cold": "runny nose", "sprain": "swollen ankle"}


def _row(i: int, label: str) -> str:
    return f"{TEXTS.get(label, 'red spots')} case {i},{label}"


def _csv(path: Path, labels: list[str], n: int) -> Path:
    rows = [_row(i, labels[i % len(labels)]) for i in range(n)]
    path.write_text("note,diagnosis\n" + "\n".join(rows) + "\n")
    return path


def _join(port: int, cid: str, data: Path, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fedfm.cli", "join", "--server", f"localhost:{port}"]
    cmd += ["--id", cid, "--insecure", "--data", str(data), "--state-dir", "none"]
    env = {**os.environ, "FEDFM_CACHE": str(cache)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_clients_bring_their_own_files_with_the_servers_column_names(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "server-cache"))
    server_file = _csv(tmp_path / "server.csv", ["cold", "flu", "sprain"], 30)
    cfg = load_config(
        None,
        [
            f"data.dataset={server_file}",
            "data.text_column=note",
            "data.label_column=diagnosis",
            "data.partition=iid",
            "data.num_clients=2",
            "data.min_client_size=2",
            "adapter.method=head",
            "data.max_length=16",
            "rounds=1",
            "strategy.fraction=1.0",
            f"remote.clients={json.dumps(CLIENTS)}",
            f"remote.address=localhost:{port}",
            "remote.insecure=true",
            f"output_dir={tmp_path / 'runs'}",
            "name=own",
        ],
    )
    run_dir = prepare_run_dir(cfg, overwrite=False)
    out: dict = {}

    def serve() -> None:
        try:
            execute(cfg, run_dir=run_dir, console=Console(quiet=True), backend=remote_backend)
        except BaseException as err:  # surfaced below
            out["error"] = err

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cache = tmp_path / "client-cache"
    bad = _csv(tmp_path / "bad.csv", ["flu", "measles"], 6)
    refused = _join(port, "clinic-b", bad, cache)
    log = refused.communicate(timeout=120)[0].decode()
    assert refused.returncode == 2, log
    flat = " ".join(log.split())
    assert "['measles'] are not among them" in flat and "['cold', 'flu', 'sprain']" in flat
    a = _join(port, "clinic-a", _csv(tmp_path / "a.csv", ["flu", "cold"], 8), cache)
    b = _join(port, "clinic-b", _csv(tmp_path / "b.csv", ["sprain", "flu"], 10), cache)
    logs = [p.communicate(timeout=240)[0].decode() for p in (a, b)]
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in out, (out, logs)
    assert all(p.returncode == 0 for p in (a, b)), logs
    assert "8 training examples" in logs[0] and "10 training examples" in logs[1]
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["participants"] == CLIENTS and record["num_examples"] == 18
