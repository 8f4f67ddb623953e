"""The long adversarial runs (``-m slow``): 10,000 fuzzed calls at a live TLS server followed
by a legitimate run equal to the simulation, and oversized streams against the server's
memory. Their numbers are printed (run with ``-s``) for the record."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from rich.console import Console
from test_adversarial import _coordinator
from test_serve_join import CLIENTS, _client, _events, _fuzz, _overrides, _params, _port, _serve

from fedfm.config import load_config
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.service import start_server
from fedfm.runtime.run import execute, prepare_run_dir

pytestmark = pytest.mark.slow
SCAFFOLD = "strategy.name=scaffold"  # extras travel too: the fuzzer spoils those as well


def test_ten_thousand_fuzzed_calls_then_a_run_equal_to_the_simulation(tmp_path, tls):
    port = _port()
    cfg = load_config(None, _overrides(tmp_path, port, "name=fuzzed", SCAFFOLD))
    run_dir = prepare_run_dir(cfg, overwrite=False)
    thread, out = _serve(cfg, run_dir)
    started = time.monotonic()
    counts = _fuzz(cfg, run_dir, port, tls, n=10_000, seed=7)
    seconds = time.monotonic() - started
    print(f"\nfuzz: {dict(counts)} in {seconds:.0f} s")
    assert counts["refused"] == counts["attempts"] == 10_000, counts
    procs = [_client(tmp_path, port, cid) for cid in CLIENTS]
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in out, out
    assert all(p.wait(timeout=60) == 0 for p in procs)
    events = _events(run_dir)
    assert not [e for e in events if e["event"] == "error"]
    assert [e for e in events if e["event"] == "stopped"][0]["clean"]
    sim_cfg = load_config(None, _overrides(tmp_path, port, "name=simulated", SCAFFOLD))
    execute(sim_cfg, run_dir=prepare_run_dir(sim_cfg, overwrite=False), console=Console(quiet=True))
    remote, simulated = _params(run_dir), _params(tmp_path / "runs" / "simulated")
    assert all(torch.equal(remote[k], simulated[k]) for k in simulated)


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def test_oversized_streams_are_refused_before_they_are_buffered(tmp_path):
    coord = _coordinator(tmp_path)  # max_update_mb = 1024: a 200 MiB update is in bounds
    server, port = start_server(coord)
    piece = bytes(1 << 20)
    size = 200 << 20

    def stream(cid: str, session: str):
        meta = {"session": session, "num_examples": "5", "metrics": '{"train_loss": 1}'}
        header = pb.Header(kind="update", round=2, client_id=cid, total_bytes=size, meta=meta)
        yield pb.Chunk(header=header)
        for _ in range(size // len(piece)):
            yield pb.Chunk(data=piece)

    senders = [("a", "forged"), ("b", ""), ("c", coord.sessions["c"])]  # c: not in the cohort
    replies: list = []

    def send(cid: str, session: str) -> None:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            stub = pb_grpc.FederationStub(channel)
            try:
                replies.append(stub.SendUpdate(stream(cid, session), timeout=120))
            except grpc.RpcError as err:
                replies.append(err.code())

    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here
    before = _rss_mb("VmRSS")
    threads = [threading.Thread(target=send, args=s) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    peak, after = _rss_mb("VmHWM"), _rss_mb("VmRSS")
    print(f"\noversized: RSS {before:.0f} MB before, peak {peak:.0f} MB, {after:.0f} MB after")
    assert all(isinstance(r, pb.Ack) and not r.ok for r in replies), replies
    assert peak - before < 100  # three 200 MiB streams, none of them buffered
    server.stop(grace=0).wait(5)
    coord.watchdog.close()
    reasons = {e["reason"] for e in _events(tmp_path) if e["event"] == "rejected"}
    assert reasons == {
        "unknown session for client 'a'",
        "unknown session for client 'b'",
        "'c' is not in round 2's cohort",
    }
