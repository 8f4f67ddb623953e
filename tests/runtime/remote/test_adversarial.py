"""``fedfm serve`` under attack: forged sessions, crafted claims and tensors, stalled and
oversized streams, injected strings, a hostile server. Each case failed before its fix."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from remote_fuzz import Fuzzer, Target
from rich.console import Console

from fedfm.config import load_config
from fedfm.errors import ConfigError, FedFMError
from fedfm.runtime.job import build_job
from fedfm.runtime.remote import coordinator as server_module
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.client import Connection, fetch_config, join
from fedfm.runtime.remote.client_state import state_folder
from fedfm.runtime.remote.codec import chunks, encode_params
from fedfm.runtime.remote.coordinator import Busy, Coordinator, wire_template
from fedfm.runtime.remote.security import (
    add_client,
    client_certificate,
    make_tls,
    read_credentials,
)
from fedfm.runtime.remote.service import start_server

BASE = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=3",
    "data.partition=iid",
    'remote.clients=["a", "b", "c"]',
    "remote.insecure=true",
    "remote.address=localhost:0",
]


def _coordinator(tmp_path: Path, *extra: str, join: bool = True) -> Coordinator:
    coord = Coordinator(
        build_job(load_config(None, [*BASE, *extra])), tmp_path, Console(quiet=True)
    )
    if join:
        for cid in ("a", "b", "c"):
            assert coord.join(pb.JoinRequest(client_id=cid, backbone=coord.job.backbone)).accepted
    coord.open_round, coord.members = 2, {"a": 0, "b": 1}
    coord.like = {k: torch.zeros_like(v) for k, v in coord.job.initial_params.items()}
    coord.template = wire_template(coord.job, coord.like)
    return coord


def _delta(coord: Coordinator) -> dict[str, torch.Tensor]:
    return {f"delta/{k}": torch.zeros_like(v) for k, v in coord.like.items()}


def _meta(coord: Coordinator, cid: str = "a", **changes: str | None) -> dict[str, str]:
    meta = {
        "session": coord.sessions.get(cid, ""),
        "num_examples": "5",
        "metrics": json.dumps({"train_loss": 1.0, "steps": 1}),
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def _send(coord, cid="a", *, meta=None, params=None, kind="update", round_=2) -> pb.Ack:
    body = encode_params(params if params is not None else _delta(coord))
    meta = _meta(coord, cid) if meta is None else meta
    return coord.submit(chunks(kind, body, round_=round_, client_id=cid, meta=meta))


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_an_update_without_a_session_is_refused_even_before_anyone_joined(tmp_path):
    coord = _coordinator(tmp_path, join=False)  # e.g. just after --resume: no sessions yet
    for session in (None, ""):
        meta = _meta(coord, session=session)
        ack = _send(coord, meta=meta)
        assert not ack.ok and "unknown session for client 'a'" in ack.reason
    assert coord.arrived == {} and coord.errors == 0
    assert coord.rejected == {}  # a stranger's words are not put on a member's record


def test_the_header_is_checked_before_the_body_is_read(tmp_path):
    coord = _coordinator(tmp_path)

    def stream():
        header = pb.Header(kind="update", round=2, client_id="a", total_bytes=10**8)
        yield pb.Chunk(header=header)  # no session
        raise AssertionError("the server read the body of an unauthenticated stream")

    ack = coord.submit(stream())
    assert not ack.ok and "unknown session" in ack.reason


BAD_CLAIMS = [
    ({"num_examples": None}, "has no num_examples"),
    ({"num_examples": "-1000"}, "num_examples = -1000 is outside [1, 1000]"),
    ({"num_examples": "0"}, "num_examples = 0 is outside"),
    ({"num_examples": "1001"}, "num_examples = 1001 is outside [1, 1000]"),
    ({"num_examples": "1e3"}, "is not an integer"),
    ({"num_examples": "9" * 40}, "is not an integer"),
    ({"metrics": None}, "metrics lack train_loss"),
    ({"metrics": '{"train_loss": "x"}'}, "is not a finite number"),
    ({"metrics": '{"train_loss": NaN}'}, "is not a finite number"),
    ({"metrics": '{"train_loss": true}'}, "is not a finite number"),
    ({"metrics": '{"train_loss": {"a": 1}}'}, "is not a finite number"),
    ({"metrics": "[1]"}, "must be a JSON object"),
    ({"metrics": "[" * 3_000}, "metrics is not JSON"),
    ({"metrics": "1" * 5_000}, "header field metrics is over 4096 characters"),
    ({"metrics": json.dumps({f"m{i}": 1 for i in range(40)})}, "40 metrics, over the limit"),
    ({"bytes_up": "-5"}, "bytes_up = -5 is outside"),
    ({"bytes_up": str(2**40)}, "is outside [0,"),
    ({"rank": "-1"}, "rank = -1 is outside"),
    ({"planted": "1"}, "unknown header field 'planted'"),
]


@pytest.mark.parametrize(("changes", "reason"), BAD_CLAIMS)
def test_every_claim_of_an_update_is_checked(tmp_path, changes, reason):
    coord = _coordinator(tmp_path, "remote.max_examples=1000")
    ack = _send(coord, meta=_meta(coord, **changes))
    assert not ack.ok and reason in ack.reason, ack.reason
    assert coord.arrived == {} and coord.errors == 0
    assert list(coord.rejected) == [0]  # the member's refusal goes into the round's record


def test_crafted_tensors_and_kinds_are_refused_with_their_reason(tmp_path):
    coord = _coordinator(tmp_path, "strategy.name=scaffold", "client.optimizer=sgd")
    coord.extras_like = {f"dc.{k}": torch.zeros_like(v) for k, v in coord.like.items()}
    name = sorted(coord.like)[0]
    good = {
        **_delta(coord),
        **{f"extras/dc.{k}": torch.zeros_like(v) for k, v in coord.like.items()},
    }
    cases = {
        "non-finite values": {
            **good,
            f"delta/{name}": torch.full_like(coord.like[name], torch.nan),
        },
        "dtype torch.float8_e4m3fn": {
            **good,
            f"delta/{name}": torch.zeros(coord.like[name].shape, dtype=torch.float8_e4m3fn),
        },
        "dtype torch.uint16": {**good, f"delta/{name}": torch.zeros(2, dtype=torch.uint16)},
        "malformed extras": {**good, f"extras/dc.{name}": torch.zeros(1)},
        "malformed delta": {k: v for k, v in good.items() if k != f"delta/{name}"},
    }
    for reason, params in cases.items():
        ack = _send(coord, params=params)
        assert not ack.ok and reason in ack.reason, (reason, ack.reason)
    ack = _send(coord, params=good, kind="task")
    assert not ack.ok and "a stream of kind 'task', not 'update'" in ack.reason
    assert coord.arrived == {} and coord.errors == 0
    assert _send(coord, params=good).ok  # the same update, well formed, is taken


def test_one_stream_per_client_and_a_bounded_total_in_flight(tmp_path):
    coord = _coordinator(tmp_path, "remote.max_update_mb=1", "remote.max_inflight_mb=1")
    opened, release = threading.Event(), threading.Event()
    body = encode_params(_delta(coord))
    parts = list(chunks("update", body, round_=2, client_id="a", meta=_meta(coord), chunk_size=64))

    def slow():
        yield parts[0]
        opened.set()
        release.wait(10)
        yield from parts[1:]

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(ack=coord.submit(slow())))
    thread.start()
    assert opened.wait(10)
    time.sleep(0.1)  # the header is checked and its bytes reserved
    with pytest.raises(Busy, match="an update from 'a' is already arriving"):
        _send(coord)
    big = pb.Header(
        kind="update", round=2, client_id="b", total_bytes=2**20, meta=_meta(coord, "b")
    )
    with pytest.raises(Busy, match="the server is busy"):
        coord.submit(iter([pb.Chunk(header=big)]))
    release.set()
    thread.join(10)
    assert result["ack"].ok and list(coord.arrived) == [0]


def test_a_task_can_be_fetched_again_until_the_update_arrives(tmp_path):
    coord = _coordinator(tmp_path)
    coord.tasks = {"a": server_module._Task(2, b"payload")}
    request = pb.TaskRequest(client_id="a", session=coord.sessions["a"])
    for _ in range(2):  # a client that restarts mid-round asks again
        header = next(iter(coord.task(request))).header
        assert (header.kind, header.round) == ("task", 2)
    assert _send(coord).ok
    assert next(iter(coord.task(request))).header.kind == "wait"


@pytest.mark.parametrize("patience", [0, 1])
def test_a_round_below_its_quorum_closes_after_its_patience_with_what_arrived(tmp_path, patience):
    coord = _coordinator(tmp_path, "remote.deadline=0.3", f"remote.patience={patience}")
    assert coord.cfg.remote.quorum == 1.0
    threading.Timer(0.05, lambda: _send(coord)).start()
    started = time.monotonic()
    arrived = coord._await(2, cohort=2)
    assert list(arrived) == [0] and 0.3 * (1 + patience) <= time.monotonic() - started < 3
    kinds = [e["event"] for e in _events(tmp_path)]
    assert kinds.count("waiting") == patience and "closed" in kinds
    assert not _send(coord, "b").ok  # the round is closed to late updates


def test_client_strings_reach_the_log_escaped_and_cut_short(tmp_path, capsys):
    coord = _coordinator(tmp_path)
    coord.console = Console(force_terminal=True, width=200)
    for cid in ("x\n[/bold]\x1b[31mred", "[bold]" + "A" * 4_000_000):
        reply = coord.join(pb.JoinRequest(client_id=cid))  # raised MarkupError before
        assert not reply.accepted
    refused = [e for e in _events(tmp_path) if e["event"] == "refused"]
    assert refused[0]["reason"] == "unknown client 'x\\n[/bold]\\x1b[31mred'"
    assert len(refused) == 2 and len(json.dumps(refused[1])) < 1_000
    out = capsys.readouterr().out
    assert "\x1b[31mred" not in out and "[/bold]" in out and "\\x1b[31m" in out


def test_a_full_events_file_keeps_the_round_events_and_counts_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_EVENTS_BYTES", 600)
    coord = _coordinator(tmp_path)
    for _ in range(20):
        coord.join(pb.JoinRequest(client_id="mallory"))
    coord.log("round", round=3, cohort=["a"])
    events = _events(tmp_path)
    assert coord.suppressed > 10 and events[-1]["event"] == "round"
    assert (tmp_path / "events.jsonl").stat().st_size < 1_000


def test_path_like_client_ids_are_refused_on_the_client(tmp_path):
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"client_id": "../../x", "token": "t"}))
    with pytest.raises(ConfigError, match=r"client id '\.\./\.\./x' must be 1-64 letters"):
        read_credentials(creds)
    with pytest.raises(FedFMError, match="cannot name a folder"):
        state_folder(tmp_path, "../../x", "ab12")


# ---------------------------------------------------------------- over a live gRPC server


@pytest.fixture
def live(tmp_path):
    coord = _coordinator(tmp_path, "remote.stream_timeout=0.5")
    server, port = start_server(coord)
    channel = grpc.insecure_channel(f"localhost:{port}")
    yield coord, server, channel
    channel.close()
    server.stop(grace=0).wait(5)
    coord.watchdog.close()


def test_stalled_streams_are_cut_and_the_server_stays_answerable_and_stoppable(live):
    coord, server, channel = live
    stub = pb_grpc.FederationStub(channel)
    stop = threading.Event()

    def stalled():
        stop.wait(30)
        yield pb.Chunk()

    outcomes: list = []

    def open_stream() -> None:
        try:
            outcomes.append(stub.SendUpdate(stalled(), timeout=30))
        except grpc.RpcError as err:
            outcomes.append(err.code())

    threads = [threading.Thread(target=open_stream) for _ in range(server_module.THREADS)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    config = stub.GetConfig(pb.JoinRequest(client_id="a"), timeout=5)  # still answered
    assert config.ok
    for t in threads:
        t.join(10)
    stop.set()
    assert not any(t.is_alive() for t in threads)
    busy = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert busy >= server_module.THREADS - server_module.HEADER_WAITS, outcomes
    assert coord.watchdog.cancelled >= 1 and coord.watchdog.watching == 0
    assert server.stop(grace=1.0).wait(timeout=5)


def test_a_handler_error_is_logged_and_answered_with_a_clear_status(live, monkeypatch):
    coord, _, channel = live

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(coord, "config", broken)
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.FederationStub(channel).GetConfig(pb.JoinRequest(client_id="a"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "GetConfig failed on the server (logged)" in err.value.details()
    errors = [e for e in _events(coord.run_dir) if e["event"] == "error"]
    assert errors == [
        {**errors[0], "call": "GetConfig", "client": "a", "error": "RuntimeError: boom"}
    ]


def test_a_fuzzed_burst_is_refused_without_an_error_or_a_hang(live):
    coord, server, channel = live
    coord.open_round, coord.members = 1, {"a": 0}
    fuzzer = Fuzzer(Target(channel, "a", "", coord.like), seed=1)
    fuzzer.session = coord.sessions["a"]
    counts = fuzzer.run(150)
    assert counts["attempts"] == counts["refused"] == 150, counts
    assert coord.errors == 0 and coord.arrived == {}
    # unparsable update streams once left calls pending inside grpcio: stop never returned
    assert server.stop(grace=0).wait(timeout=5)


class _HostileServer(pb_grpc.FederationServicer):
    def __init__(self, config_toml: str, kind: str, round_: int) -> None:
        self.config_toml, self.kind, self.round = config_toml, kind, round_

    def GetConfig(self, request, context):  # noqa: N802
        return pb.ConfigReply(ok=True, config_toml=self.config_toml)

    def Join(self, request, context):  # noqa: N802
        return pb.JoinReply(accepted=True, session="s")

    def GetTask(self, request, context):  # noqa: N802
        yield from chunks(self.kind, b"", round_=self.round)


@pytest.mark.parametrize(("kind", "round_"), [("task", -3), ("task", 0), ("evil", 1)])
def test_a_client_refuses_a_task_no_fedfm_server_sends(tmp_path, kind, round_):
    from concurrent import futures

    from fedfm.config import to_toml

    cfg = load_config(None, [*BASE, "data.num_clients=1", 'remote.clients=["a"]'])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FederationServicer_to_server(_HostileServer(to_toml(cfg), kind, round_), server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        conn = Connection(f"localhost:{port}", "a", "", insecure=True)
        with pytest.raises(FedFMError, match=f"sent a '{kind}' message for round {round_}"):
            join(conn, console=Console(quiet=True), tries=1)
    finally:
        server.stop(grace=0)


def test_tls_identity_is_bound_to_the_client_id_and_a_wrong_ca_fails_at_once(tmp_path):
    tls = tmp_path / "tls"
    make_tls(tls)
    tokens = {cid: add_client(tls, cid, tmp_path / f"{cid}.json") for cid in ("a", "b")}
    cert, key = client_certificate(tls, "a")
    coord = _coordinator(
        tmp_path,
        f"remote.tls_dir={tls}",
        "remote.insecure=false",
        "remote.mutual_tls=true",
        join=False,
    )
    server, port = start_server(coord)
    try:
        creds = grpc.ssl_channel_credentials(
            (tls / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
        )
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            stub = pb_grpc.FederationStub(channel)
            backbone = coord.job.backbone
            mine = stub.Join(pb.JoinRequest(client_id="a", token=tokens["a"], backbone=backbone))
            theirs = stub.Join(pb.JoinRequest(client_id="b", token=tokens["b"], backbone=backbone))
        assert mine.accepted and not theirs.accepted
        assert theirs.reason == "the TLS certificate is 'a''s, not 'b''s"
        other = tmp_path / "other"
        make_tls(other)
        conn = Connection(
            f"localhost:{port}",
            "a",
            tokens["a"],
            ca=(other / "ca.pem").read_bytes(),
            cert=cert.read_bytes(),
            key=key.read_bytes(),
        )
        started = time.monotonic()
        with pytest.raises(FedFMError, match="the TLS handshake failed"):
            fetch_config(conn, console=Console(quiet=True), tries=20)
        assert time.monotonic() - started < 5  # not retried for minutes
    finally:
        server.stop(grace=0).wait(5)
        coord.watchdog.close()
