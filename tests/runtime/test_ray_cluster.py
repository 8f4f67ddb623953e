"""The Ray backend joins a running cluster by address (``ray start --head``) and leaves it
running; slow (a cluster start and stop), so it runs with ``make test-all``."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedfm.report.metrics import read_records

pytest.importorskip("ray")

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=8",
    "strategy.clients_per_round=4",
    "client.optimizer=sgd",
    "client.lr=0.05",
    "rounds=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedfm_run(tmp_path: Path, name: str, *extra: str, env: dict[str, str]) -> list[dict]:
    sets = [
        x for kv in (*FAST, f"output_dir={tmp_path}", f"name={name}", *extra) for x in ("--set", kv)
    ]
    cmd = [sys.executable, "-m", "fedfm.cli", "run", *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in read_records(tmp_path / name / "metrics.jsonl")
    ]


@pytest.mark.slow
def test_the_backend_joins_a_running_cluster_and_leaves_it_running(tmp_path):
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    # `ray start` turns on token authentication (~/.ray/auth_token); a driver that joins by
    # HOST:PORT must be told to send the token (joining by "auto" finds out by itself)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1"}  # as in the workers
    start = [
        ray_cli,
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
    ]
    subprocess.run(start, check=True, capture_output=True, env=env)
    try:
        local = _fedfm_run(tmp_path, "local", env=env)
        address = f"127.0.0.1:{port}"
        cluster = _fedfm_run(tmp_path, "cluster", "backend=ray", f"ray.address={address}", env=env)
        assert cluster == local
        status = subprocess.run(
            [ray_cli, "status", f"--address={address}"], env=env, capture_output=True, text=True
        )
        assert status.returncode == 0 and "2.0 CPU" in status.stdout, status  # still up
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True)
