"""``fedfm serve`` on a dataset file, and remote clients that bring their own files (--data)."""

from __future__ import annotations

import json
import os
import socket
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _serve(cfg, run_dir: Path) -> tuple[threading.Thread, dict]:
    """``fedfm serve`` of ``cfg`` in a thread; an error it raises lands in the dict."""
    out: dict = {}

    def serve() -> None:
        try:
            execute(cfg, run_dir=run_dir, console=Console(quiet=True), backend=remote_backend)
        except BaseException as err:  # surfaced by the caller
            out["error"] = err

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.slow
def test_clients_bring_their_own_files_with_the_servers_column_names(tmp_path, monkeypatch):
    port = _free_port()
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
    thread, out = _serve(cfg, run_dir)
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


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _pairs(path: Path, n: int, start: int) -> Path:
    with path.open("w") as f:
        for i in range(start, start + n):
            row = {"prompt": f"What is {i} plus one?", "chosen": f"{i + 1}", "rejected": f"{i}"}
            f.write(json.dumps(row) + "\n")
    return path


@pytest.mark.slow
def test_federated_dpo_with_remote_clients_on_their_own_pair_files(
    tmp_path, monkeypatch, tiny_model_dirs
):
    """DPO over gRPC: each client brings a preference file; the server scores the pairs."""
    port = _free_port()
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "server-cache"))
    cfg = load_config(
        None,
        [
            f"data.dataset={_pairs(tmp_path / 'server.jsonl', 24, 0)}",
            "data.task=preference",
            "data.partition=iid",
            "data.num_clients=2",
            "data.max_length=32",
            f"model.name={json.dumps(str(tiny_model_dirs['qwen2']))}",
            f"model.chat_template={json.dumps(CHATML)}",
            "client.lr=0.05",
            "client.batch_size=4",
            "rounds=2",
            "strategy.fraction=1.0",
            f"remote.clients={json.dumps(CLIENTS)}",
            f"remote.address=localhost:{port}",
            "remote.insecure=true",
            f"output_dir={tmp_path / 'runs'}",
            "name=dpo",
        ],
    )
    run_dir = prepare_run_dir(cfg, overwrite=False)
    thread, out = _serve(cfg, run_dir)
    cache = tmp_path / "client-cache"
    a = _join(port, "clinic-a", _pairs(tmp_path / "a.jsonl", 8, 100), cache)
    b = _join(port, "clinic-b", _pairs(tmp_path / "b.jsonl", 12, 200), cache)
    logs = [p.communicate(timeout=240)[0].decode() for p in (a, b)]
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in out, (out, logs)
    assert all(p.returncode == 0 for p in (a, b)), logs
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_examples"] for r in records] == [20, 20]  # pairs, from the clients' files
    assert all(0 <= r["test_preference_accuracy"] <= 1 for r in records)
    assert records[-1]["train_loss"] < 0.6931  # DPO moved off log 2 (a fresh adapter's loss)
