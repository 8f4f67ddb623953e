"""``fedfm serve`` with real client processes on loopback, TLS on (small digits + MLP job)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
import torch
from remote_fuzz import Fuzzer, Target
from rich.console import Console
from safetensors.torch import load_file

from fedfm.config import load_config
from fedfm.runtime.job import build_job
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.coordinator import EVENTS_FILE
from fedfm.runtime.remote.server import remote_backend
from fedfm.runtime.run import execute, prepare_run_dir

CLIENTS = ["c0", "c1", "c2"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _overrides(tmp_path: Path, port: int, *extra: str) -> list[str]:
    return [
        "data.dataset=digits",
        "model.name=mlp",
        "adapter.method=full",
        "data.num_clients=3",
        "data.partition=iid",
        "strategy.clients_per_round=3",
        "client.lr=0.01",
        "rounds=3",
        f"remote.clients={json.dumps(CLIENTS)}",
        f"remote.address=localhost:{port}",
        f"remote.tls_dir={tmp_path / 'tls'}",
        f"output_dir={tmp_path / 'runs'}",
        *extra,
    ]


def _client(tmp_path: Path, port: int, cid: str, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "fedfm.cli",
        "join",
        "--server",
        f"localhost:{port}",
        "--credentials",
        str(tmp_path / f"{cid}.json"),
        "--ca",
        str(tmp_path / "tls" / "ca.pem"),
        "--state-dir",
        str(tmp_path / "states"),
        *extra,
    ]
    # the clients inherit this process's thread settings: a different thread count can change
    # a matmul's summation order, and the remote run is compared bit for bit with the simulation
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _serve(cfg, run_dir, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["summary"] = execute(
                cfg, run_dir=run_dir, console=Console(quiet=True), backend=remote_backend, **kwargs
            )
        except BaseException as err:  # surfaced by the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _fuzz(cfg, run_dir: Path, port: int, tls: Path, *, n: int, seed: int = 0) -> Counter:
    """``n`` bad calls (:mod:`remote_fuzz`) at the serving run, some with c0's real session."""
    deadline = time.monotonic() + 60
    while not any(e["event"] == "round" for e in _events(run_dir)):
        assert time.monotonic() < deadline, _events(run_dir)
        time.sleep(0.05)
    job = build_job(cfg, warmup=False)
    token = json.loads((tls.parent / "c0.json").read_text())["token"]
    creds = grpc.ssl_channel_credentials((tls / "ca.pem").read_bytes())
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        stub = pb_grpc.FederationStub(channel)
        reply = stub.Join(pb.JoinRequest(client_id="c0", token=token, backbone=job.backbone))
        assert reply.accepted, reply.reason
        fuzzer = Fuzzer(Target(channel, "c0", token, job.initial_params, round=1), seed=seed)
        fuzzer.session = reply.session
        return fuzzer.run(n)


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / EVENTS_FILE
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter.safetensors")


# 4-bit uploads with error feedback: the codes travel, the residual stays on each client
COMPRESSED = (
    "compression.method=quantize",
    "compression.bits=4",
    "compression.error_feedback=true",
)


def test_remote_clients_reproduce_the_simulation_and_strangers_are_refused(tmp_path, tls):
    port = _port()
    cfg = load_config(None, _overrides(tmp_path, port, "name=remote", *COMPRESSED))
    run_dir = prepare_run_dir(cfg, overwrite=False)
    thread, out = _serve(cfg, run_dir)
    counts = _fuzz(cfg, run_dir, port, tls, n=200)  # before the real clients come
    assert counts["refused"] == counts["attempts"] == 200, counts
    procs = [_client(tmp_path, port, cid) for cid in CLIENTS]
    (tmp_path / "forged.json").write_text(json.dumps({"client_id": "c1", "token": "forged"}))
    forged = _client(tmp_path, port, "forged")
    outsider = _client(tmp_path, port, "mallory")  # a valid token, not in remote.clients
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in out, out
    logs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert forged.wait(timeout=60) == 2 and outsider.wait(timeout=60) == 2
    refused = {e["reason"] for e in _events(run_dir) if e["event"] == "refused"}
    assert {"invalid credentials for 'c1'", "unknown client 'mallory'"} <= refused
    assert not [e for e in _events(run_dir) if e["event"] == "error"]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["participants"] for r in records] == [CLIENTS] * 3
    sent = [e["bytes"] for e in _events(run_dir) if e["event"] == "update"]
    assert len(sent) == 9 and sum(sent) <= 1.05 * sum(r["bytes_up"] for r in records)

    sim_cfg = load_config(None, _overrides(tmp_path, port, "name=simulated", *COMPRESSED))
    execute(sim_cfg, run_dir=prepare_run_dir(sim_cfg, overwrite=False), console=Console(quiet=True))
    remote, simulated = _params(run_dir), _params(tmp_path / "runs" / "simulated")
    assert all(torch.equal(remote[k], simulated[k]) for k in simulated)
    assert max(sent) < sum(4 * v.numel() for v in simulated.values()) / 6  # not float32


def test_a_client_killed_mid_run_leaves_the_rounds_to_the_quorum(tmp_path, tls):
    port = _port()
    extra = ("remote.deadline=3", "remote.quorum=0.6", "name=quorum")
    cfg = load_config(None, _overrides(tmp_path, port, *extra))
    run_dir = prepare_run_dir(cfg, overwrite=False)
    thread, out = _serve(cfg, run_dir)
    procs = {cid: _client(tmp_path, port, cid) for cid in CLIENTS}
    deadline = time.monotonic() + 120
    while not any(e["event"] == "update" and e["client"] == "c2" for e in _events(run_dir)):
        assert time.monotonic() < deadline, _events(run_dir)
        time.sleep(0.05)
    procs["c2"].kill()
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in out, out
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    late = [r for r in records if "c2" not in r["participants"]]
    assert late, records
    assert all(
        {"client": 2, "reason": "missed the deadline (late, dead or never joined)"} in r["excluded"]
        for r in late
    )


def test_a_killed_server_resumes_to_the_same_params(tmp_path, tls):
    # SCAFFOLD and error feedback: each client's control variate and residual must survive
    # its own restart (kept in --state-dir) for the run to match an uninterrupted one
    stateful = ("strategy.name=scaffold", *COMPRESSED)
    port = _port()
    cfg = load_config(None, _overrides(tmp_path, port, "name=cut", *stateful))
    run_dir = prepare_run_dir(cfg, overwrite=False)
    for kwargs in ({"stop_after": 1}, {"resume": True}):  # killed after round 1, then resumed
        thread, out = _serve(cfg, run_dir, **kwargs)
        procs = [_client(tmp_path, port, cid) for cid in CLIENTS]  # new client processes
        thread.join(timeout=240)
        assert "error" not in out, out
        assert all(p.wait(timeout=60) == 0 for p in procs)
    assert out["summary"]["rounds_completed"] == 3
    run = (run_dir / "run_id").read_text()
    assert sorted(p.name for p in (tmp_path / "states" / "c0" / run).iterdir()) == [
        "round-000002.safetensors",
        "round-000003.safetensors",
    ]
    sim_cfg = load_config(None, _overrides(tmp_path, port, "name=simulated", *stateful))
    execute(sim_cfg, run_dir=prepare_run_dir(sim_cfg, overwrite=False), console=Console(quiet=True))
    straight, resumed = _params(tmp_path / "runs" / "simulated"), _params(run_dir)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["remote.clients=[]"], "remote.clients is empty"),
        (["data.num_clients=4"], "data.num_clients = 4 but remote.clients lists 3"),
        (["remote.tls_dir="], "remote.tls_dir is empty"),
        (["secagg.enabled=true"], "secagg.enabled = true is simulated"),
    ],
)
def test_serve_refuses_what_it_cannot_run(tmp_path, extra, match):
    from fedfm.errors import ConfigError
    from fedfm.runtime.remote.server import check_remote

    with pytest.raises(ConfigError, match=match):
        check_remote(load_config(None, _overrides(tmp_path, 1, *extra)))
