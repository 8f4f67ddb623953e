"""FedBuff with ``fedfm serve``: real client processes on loopback, TLS on, arrivals in the
order the network delivers them and the server's wall clock (small digits + MLP job)."""

from __future__ import annotations

import json
import threading
import time

import torch
from rich.console import Console
from test_adversarial import _coordinator  # digits + MLP, clients a, b, c joined, no network
from test_coordinator import _update
from test_serve_join import (
    CLIENTS,
    COMPRESSED,
    _client,
    _events,
    _overrides,
    _params,
    _port,
    _serve,
)

from fedfm.config import load_config
from fedfm.report.plots import WALL_AXIS, clock_axis
from fedfm.runtime.fedbuff import FedBuffServer
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote.coordinator import GIVEN_UP, RESTARTED, _Task
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.runtime.simulation import RoundState, plan_work


def _records(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_coordinator_takes_each_client_s_own_task_and_gives_up_on_a_silent_one(tmp_path):
    coord = _coordinator(
        tmp_path, "asynchronous.enabled=true", "remote.deadline=0.3", "remote.patience=1"
    )
    coord.open_round, coord.members = 0, {}  # no synchronous round is open
    job, server = coord.job, FedBuffServer(size=1)
    state = RoundState(round=0, global_params=job.initial_params)
    for cid in (0, 1):  # a and b train toward step 1 from version 0
        client = job.federation[cid]
        coord.launch(job, state, server, client, plan_work(job, client), {}, 1)
    assert sorted(coord.tasks) == ["a", "b"] and server.busy() == {0, 1}
    assert _update(coord, "a", round_=1).ok
    refusals = {
        "a second update from 'a'": _update(coord, "a", round_=1),
        "update for round 2, but 'b''s task is for round 1": _update(coord, "b", round_=2),
        "'c' has no task in flight": _update(coord, "c", round_=1),
    }
    for reason, ack in refusals.items():
        assert not ack.ok and reason in ack.reason, (reason, ack.reason)

    first = coord.arrival(job, server)  # a's update, at once
    assert (first.flight.client, first.staleness, first.flight.payload[1]) == (0, 0, None)
    server.hold(first)
    server.flush()  # version 1
    started = time.monotonic()
    second = coord.arrival(job, server)  # b never sends: given up 0.3 × (1 + 1) s after
    assert time.monotonic() - started < 1.0 and second.time >= 0.6
    assert second.flight.payload == (None, GIVEN_UP.format(seconds=0.6))
    assert second.staleness == 1 and not server.in_flight and coord.tasks == {}
    assert "'b' has no task in flight" in _update(coord, "b", round_=1).reason  # too late
    assert coord.record() == {"participants": ["a"]} and coord.record() == {"participants": []}

    # a resumed run: the restored server's flight has no task in this server process
    server.dispatch(client=2, duration=10.0, payload=(None, GIVEN_UP.format(seconds=0.6)))
    [lost] = coord.adopt(job, server)
    assert lost.flight.client == 2 and lost.flight.payload == (None, RESTARTED)


def test_the_end_of_a_run_waits_for_the_clients_still_out_with_a_task(tmp_path):
    coord = _coordinator(tmp_path, "remote.deadline=0.5")  # synchronous round 2: a and b
    coord.tasks = {name: _Task(2, b"") for name in ("a", "b")}
    for name in ("a", "b"):  # both take their task; neither has sent an update yet
        request = pb.TaskRequest(client_id=name, session=coord.sessions[name])
        assert next(iter(coord.task(request))).header.kind == "task"
    assert set(coord.out) == {"a", "b"}
    coord.finish()
    late = threading.Timer(0.2, lambda: replies.append(_update(coord, "a")))
    replies: list = []
    started = time.monotonic()
    late.start()
    coord.drain()  # a comes back after 0.2 s; b, who never finished a task, gets 0.5 s
    took = time.monotonic() - started
    assert 0.45 < took < 2.0 and coord.took["a"] >= 0.2
    assert not replies[0].ok and "the run is done" in replies[0].reason
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["clients"] for e in events if e["event"] == "undrained"] == [["b"]]


def test_remote_fedbuff_with_the_whole_cohort_in_its_buffer_is_fedavg(tmp_path, tls):
    # 4-bit uploads with error feedback: each client's residual stays on its disk between tasks
    port = _port()
    extra = ("asynchronous.enabled=true", "asynchronous.buffer=3", "asynchronous.concurrency=3")
    cfg = load_config(None, _overrides(tmp_path, port, "name=fedbuff", *extra, *COMPRESSED))
    run_dir = prepare_run_dir(cfg, overwrite=False)
    thread, out = _serve(cfg, run_dir)
    procs = [_client(tmp_path, port, cid) for cid in CLIENTS]
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in out, out
    logs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    records = _records(run_dir)
    assert [r["staleness"] for r in records] == [[0, 0, 0]] * 3
    assert [r["participants"] for r in records] == [CLIENTS] * 3
    clock = [r["sim_clock"] for r in records]
    assert clock == sorted(clock) and clock[0] > 0  # wall seconds since the first dispatch
    assert clock_axis({"remote": records}) == WALL_AXIS  # what `fedfm report` plots it as
    assert not [e for e in _events(run_dir) if e["event"] in ("error", "undrained")]

    sim_cfg = load_config(None, _overrides(tmp_path, port, "name=synchronous", *COMPRESSED))
    execute(sim_cfg, run_dir=prepare_run_dir(sim_cfg, overwrite=False), console=Console(quiet=True))
    remote, simulated = _params(run_dir), _params(tmp_path / "runs" / "synchronous")
    assert all(torch.equal(remote[k], simulated[k]) for k in simulated)


def test_remote_fedbuff_steps_on_each_arrival_while_one_client_never_comes(tmp_path, tls):
    port = _port()
    extra = (
        "asynchronous.enabled=true",
        "asynchronous.buffer=1",
        "asynchronous.concurrency=3",
        "remote.deadline=3",
        "remote.patience=1",
        "rounds=6",
        "name=fedbuff-k1",
    )
    cfg = load_config(None, _overrides(tmp_path, port, *extra))
    run_dir = prepare_run_dir(cfg, overwrite=False)
    thread, out = _serve(cfg, run_dir)
    procs = [_client(tmp_path, port, cid) for cid in CLIENTS[:2]]  # c2 never starts
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in out, out
    logs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    records = _records(run_dir)
    assert len(records) == 6 and out["summary"]["rounds_completed"] == 6
    assert all(len(r["staleness"]) == 1 and len(r["participants"]) == 1 for r in records)
    assert {p for r in records for p in r["participants"]} == {"c0", "c1"}
    # the first step's other client trained from version 0 and lands on a later version
    assert max(r["staleness_max"] for r in records) >= 1
    assert records[-1]["test_accuracy"] > records[0]["test_accuracy"]
    events = _events(run_dir)
    assert not [e for e in events if e["event"] == "error"]
    # at the end, the clients still training were told the run is done: only c2 never was
    undrained = [e for e in events if e["event"] == "undrained"]
    assert all(e["clients"] == ["c2"] for e in undrained), undrained


def test_a_killed_fedbuff_server_resumes_and_replaces_the_clients_it_had_in_flight(tmp_path, tls):
    port = _port()
    extra = (
        "asynchronous.enabled=true",
        "asynchronous.buffer=1",
        "asynchronous.concurrency=3",
        "rounds=4",
        "checkpoint.every=1",
        "name=fedbuff-cut",
    )
    cfg = load_config(None, _overrides(tmp_path, port, *extra))
    run_dir = prepare_run_dir(cfg, overwrite=False)
    for kwargs in ({"stop_after": 2}, {"resume": True}):  # killed after step 2, then resumed
        thread, out = _serve(cfg, run_dir, **kwargs)
        procs = [_client(tmp_path, port, cid) for cid in CLIENTS]  # new client processes
        thread.join(timeout=240)
        assert not thread.is_alive() and "error" not in out, out
        for p in procs:  # the first server's clients may outlive it: stopped, not judged
            if kwargs.get("resume"):
                assert p.wait(timeout=60) == 0
            else:
                p.kill()
                p.wait()
    assert out["summary"]["rounds_completed"] == 4
    records = _records(run_dir)
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    lost = [e for r in records[2:3] for e in r["excluded"] if e["reason"] == RESTARTED]
    assert len(lost) == 2  # step 2 left two of the three in flight; each replaced at once
    assert all(len(r["staleness"]) == 1 for r in records)
