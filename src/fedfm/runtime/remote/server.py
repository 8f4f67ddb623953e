"""``fedfm serve``: the federated job of a config, with its clients in other processes.

The server runs the simulator's own round phases (``plan_round``, ``receive``,
``finish_round``) and the same strategy; only ``fit_client`` runs elsewhere, in each remote
client's process. Per round it publishes one task per cohort member (the global params and
the strategy's payload, chunked safetensors), then waits until every member has answered, or
until ``remote.deadline`` has passed and at least ``remote.quorum`` of them have. Members that
did not answer are recorded as late or dead. Every update is validated before it counts.

Progress goes to the console and, as JSON lines, to ``events.jsonl`` in the run folder;
``metrics.jsonl``, checkpoints and the summary are those of a simulated run, so
``fedfm serve --resume`` continues after a crash from the last atomic checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch
from rich.console import Console

from fedfm.config import RunConfig, to_toml
from fedfm.errors import ConfigError, FedFMError
from fedfm.io import atomic_write_text
from fedfm.models.params import Params
from fedfm.runtime.job import Job
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.codec import (
    CodecError,
    assemble,
    chunks,
    decode_params,
    encode_groups,
    split_groups,
)
from fedfm.runtime.remote.security import check_token
from fedfm.runtime.simulation import (
    ClientOutcome,
    RoundIntake,
    RoundRunner,
    RoundState,
    finish_round,
    plan_round,
    receive,
)
from fedfm.strategies.aggregate import mismatches
from fedfm.strategies.base import Update

EVENTS_FILE = "events.jsonl"
RUN_ID_FILE = "run_id"


def check_remote(cfg: RunConfig) -> None:
    """Settings ``fedfm serve`` cannot run, refused before anything starts."""
    remote = cfg.remote
    if not remote.clients:
        raise ConfigError(
            "remote.clients is empty: list the client ids in federation order, e.g. "
            'remote.clients = ["clinic-a", "clinic-b", "clinic-c"]'
        )
    if cfg.data.num_clients != len(remote.clients):
        raise ConfigError(
            f"data.num_clients = {cfg.data.num_clients} but remote.clients lists "
            f"{len(remote.clients)} ids: make them equal (client i holds partition i)"
        )
    if not remote.insecure and not remote.tls_dir:
        raise ConfigError(
            "remote.tls_dir is empty: run `fedfm admin init-tls DIR` and set remote.tls_dir = "
            "DIR (or remote.insecure = true on loopback only)"
        )
    if cfg.secagg.enabled:
        raise ConfigError(
            "secagg.enabled = true is simulated inside the server; with remote clients it "
            "would not hide anything yet: set secagg.enabled = false"
        )
    if cfg.strategy.name in ("centralized", "local"):
        raise ConfigError(
            f"strategy.name = {cfg.strategy.name!r} is a reference without federation; "
            "serve a federated strategy (fedavg, fedadam, ...)"
        )


@dataclass
class _Task:
    round: int
    data: bytes


@dataclass
class Coordinator:
    """What the gRPC handlers and the round loop share (under one lock)."""

    job: Job
    run_dir: Path
    console: Console
    sessions: dict[str, str] = field(default_factory=dict)  # client id -> session token
    tasks: dict[str, _Task] = field(default_factory=dict)  # client id -> its open task
    arrived: dict[int, ClientOutcome] = field(default_factory=dict)
    open_round: int = 0
    members: dict[str, int] = field(default_factory=dict)  # open round's cohort: id -> index
    like: Params = field(default_factory=dict)  # the global params: an update's names, shapes
    template: Params = field(default_factory=dict)  # the pipeline's wire form of such an update
    finished: bool = False
    run_id: str = ""  # one server run (kept on resume): names the clients' state folders
    lock: threading.Condition = field(default_factory=threading.Condition)

    @property
    def cfg(self) -> RunConfig:
        return self.job.cfg

    def log(self, event: str, **fields: Any) -> None:
        """One structured line into events.jsonl, and a line on the console."""
        entry = {"time": time.time(), "event": event, **fields}
        with (self.run_dir / EVENTS_FILE).open("a") as f:
            f.write(json.dumps(entry) + "\n")
        shown = " ".join(f"{k}={v}" for k, v in fields.items())
        self.console.print(f"[dim]{event}[/] {shown}", highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ gRPC side

    def _authentic(self, client_id: str, token: str) -> str | None:
        if client_id not in self.cfg.remote.clients:
            return f"unknown client {client_id!r}"
        if not self.cfg.remote.insecure and not check_token(
            self.cfg.remote.tls_dir, client_id, token
        ):
            return f"invalid credentials for {client_id!r}"
        return None

    def config(self, request: pb.JoinRequest) -> pb.ConfigReply:
        refused = self._authentic(request.client_id, request.token)
        if refused:
            self.log("refused", client=request.client_id, reason=refused)
            return pb.ConfigReply(ok=False, reason=refused)
        return pb.ConfigReply(ok=True, config_toml=to_toml(self.cfg))

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        refused = self._authentic(request.client_id, request.token)
        if refused is None and request.backbone != self.job.backbone:
            refused = (
                f"backbone {request.backbone or '(none)'} is not the server's "
                f"{self.job.backbone}: load the same model and adapter as the server's config"
            )
        if refused:
            self.log("refused", client=request.client_id, reason=refused)
            return pb.JoinReply(accepted=False, reason=refused)
        session = secrets.token_urlsafe(16)
        with self.lock:
            self.sessions[request.client_id] = session
        self.log("joined", client=request.client_id)
        return pb.JoinReply(accepted=True, session=session)

    def task(self, request: pb.TaskRequest) -> Iterator[pb.Chunk]:
        with self.lock:  # decide under the lock, stream outside it
            known = self.sessions.get(request.client_id) == request.session
            finished, open_round = self.finished, self.open_round
            task = self.tasks.pop(request.client_id, None) if known and not finished else None
        if not known:
            yield from chunks("refused", b"", round_=0, meta={"reason": "unknown session"})
        elif finished:
            yield from chunks("done", b"", round_=open_round)
        elif task is None:
            yield from chunks("wait", b"", round_=open_round)
        else:
            self.log("task", client=request.client_id, round=task.round, bytes=len(task.data))
            yield from chunks(
                "task",
                task.data,
                round_=task.round,
                client_id=request.client_id,
                meta={"run": self.run_id},
            )

    def submit(self, stream: Iterator[pb.Chunk]) -> pb.Ack:
        max_bytes = int(self.cfg.remote.max_update_mb * 2**20)
        client_id = "?"
        try:
            header, data = assemble(stream, max_bytes=max_bytes)
            client_id, meta = header.client_id, dict(header.meta)
            if client_id not in self.cfg.remote.clients:
                raise CodecError(f"unknown client {client_id!r}")
            update = _decode_update(self, header, data)
            with self.lock:  # checked and taken in one step: a round cannot close in between
                if self.sessions.get(client_id) != meta.get("session"):
                    raise CodecError(f"unknown session for client {client_id!r}")
                if header.round != self.open_round:
                    raise CodecError(
                        f"update for round {header.round}, but round {self.open_round} is open"
                    )
                if client_id not in self.members:
                    raise CodecError(f"{client_id!r} is not in round {header.round}'s cohort")
                if update.client_id in self.arrived:
                    raise CodecError(f"a second update from {client_id!r} in one round")
                self.arrived[update.client_id] = ClientOutcome(update, {}, {}, {})
                self.lock.notify_all()
        except (CodecError, ValueError, KeyError) as err:
            self.log("rejected", client=client_id, reason=str(err))
            return pb.Ack(ok=False, reason=str(err))
        self.log("update", client=client_id, round=header.round, bytes=len(data))
        return pb.Ack(ok=True)

    # ------------------------------------------------------------------ round loop

    def run_round(self, state: RoundState) -> dict[str, Any]:
        """One round with remote clients; ``state`` advances in place."""
        job, remote = self.job, self.cfg.remote
        plan = plan_round(job, state)
        members = {remote.clients[c.id]: c.id for c in plan.clients}
        context = job.client_context()  # FLoRA's backbone delta, the adaptive clip norm
        blob = encode_groups(
            {"global": state.global_params, "payload": plan.payload, "context": context}
        )
        if not self.like:  # names and shapes stay the same from round to round
            self.like = {k: torch.zeros_like(v) for k, v in state.global_params.items()}
            self.template = wire_template(job, self.like)
        with self.lock:
            self.open_round, self.arrived, self.members = plan.round, {}, members
            self.tasks = {name: _Task(plan.round, blob) for name in members}
        self.log("round", round=plan.round, cohort=sorted(members))
        need = math.ceil(remote.quorum * len(members))
        deadline = time.monotonic() + remote.deadline
        with self.lock:
            while len(self.arrived) < len(members):
                left = deadline - time.monotonic()
                if left <= 0 and len(self.arrived) >= need:
                    break
                if left <= 0:  # below the quorum: keep waiting, and say so
                    self.lock.release()
                    self.log("waiting", round=plan.round, arrived=len(self.arrived), need=need)
                    self.lock.acquire()
                    deadline = time.monotonic() + remote.deadline
                    continue
                self.lock.wait(timeout=min(left, 1.0))
            arrived, self.tasks, self.open_round, self.members = dict(self.arrived), {}, 0, {}
        intake = RoundIntake()
        for client in plan.clients:
            if client.id in arrived:
                receive(job, state, intake, client.id, arrived[client.id])
            else:
                reason = "missed the deadline (late, dead or never joined)"
                intake.excluded.append({"client": client.id, "reason": reason})
        record = finish_round(job, state, plan, intake)
        record["participants"] = sorted(remote.clients[c] for c in arrived)
        return record

    def finish(self) -> None:
        with self.lock:
            self.finished = True


def wire_template(job: Job, like: Params) -> Params:
    """What a client's update pipeline puts on the wire for an update shaped like ``like``
    (its strategy's own tensors stay home): names, shapes and dtypes to check an incoming
    wire form against before it is decoded ({} without a pipeline)."""
    if not job.pipeline:
        return {}
    shared = {k: v for k, v in like.items() if k not in job.personal}
    wire, _, _ = job.pipeline.client(shared, {}, torch.Generator().manual_seed(0))
    return wire


def _received_delta(coord: Coordinator, groups: dict[str, Params]) -> Params:
    """The delta a client sent: as it is, or decoded from its pipeline's wire form (what
    compression shrinks travels shrunk) after checking the wire form's names and shapes."""
    job, wire = coord.job, groups["wire"]
    if not job.pipeline:
        if wire:
            raise CodecError("a wire form, but this server's config has no update pipeline")
        return groups["delta"]
    if groups["delta"] or not wire:
        raise CodecError(
            "a decoded delta, but this server's config has an update pipeline (compression or "
            "DP clipping): the client must send the pipeline's wire form (same fedfm version?)"
        )
    wrong = mismatches(wire, coord.template)
    if wrong:
        raise CodecError(f"malformed wire form: {wrong[:3]}")
    shared = {k: v for k, v in coord.like.items() if k not in job.personal}
    try:
        decoded = job.pipeline.server(wire, shared)
    except (IndexError, RuntimeError) as err:  # e.g. a top-k position out of range
        raise CodecError(f"wire form does not decode: {err}") from None
    # the strategy's own tensors stay on the client: a zero delta leaves them as they were
    return {k: decoded[k] if k in decoded else torch.zeros_like(v) for k, v in coord.like.items()}


def _decode_update(coord: Coordinator, header: pb.Header, data: bytes) -> Update:
    meta = dict(header.meta)
    tensors = decode_params(data, max_bytes=int(coord.cfg.remote.max_update_mb * 2**20))
    groups = split_groups(tensors, ("delta", "wire", "extras"))
    return Update(
        client_id=coord.cfg.remote.clients.index(header.client_id),
        delta=_received_delta(coord, groups),
        num_examples=int(meta["num_examples"]),
        metrics=json.loads(meta.get("metrics", "{}")),
        extras=groups["extras"],
        bytes_up=int(meta.get("bytes_up", len(data))),
        rank=int(meta.get("rank", 0)),
    )


class _Service(pb_grpc.FederationServicer):
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def GetConfig(self, request: pb.JoinRequest, context: Any) -> pb.ConfigReply:  # noqa: N802
        return self.coord.config(request)

    def Join(self, request: pb.JoinRequest, context: Any) -> pb.JoinReply:  # noqa: N802
        return self.coord.join(request)

    def GetTask(self, request: pb.TaskRequest, context: Any) -> Iterator[pb.Chunk]:  # noqa: N802
        return self.coord.task(request)

    def SendUpdate(self, request_iterator: Iterator[pb.Chunk], context: Any) -> pb.Ack:  # noqa: N802
        return self.coord.submit(request_iterator)


def start_server(coord: Coordinator) -> tuple[grpc.Server, int]:
    """Start the gRPC server on ``remote.address`` (TLS unless ``remote.insecure``); return
    it and the bound port."""
    remote = coord.cfg.remote
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_FederationServicer_to_server(_Service(coord), server)
    if remote.insecure:
        port = server.add_insecure_port(remote.address)
    else:
        folder = Path(remote.tls_dir)
        try:
            key, cert = (folder / "server.key").read_bytes(), (folder / "server.pem").read_bytes()
            ca = (folder / "ca.pem").read_bytes()
        except OSError as err:
            raise ConfigError(
                f"remote.tls_dir = '{folder}': {err.strerror} ({err.filename}); run "
                "`fedfm admin init-tls` there first"
            ) from None
        creds = grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=ca if remote.mutual_tls else None,
            require_client_auth=remote.mutual_tls,
        )
        port = server.add_secure_port(remote.address, creds)
    if port == 0:
        raise FedFMError(f"could not listen on remote.address = {remote.address!r}")
    server.start()
    return server, port


def run_id(run_dir: Path) -> str:
    """The run's id, made when it starts and kept when it resumes (``run_dir/run_id``)."""
    path = run_dir / RUN_ID_FILE
    if not path.exists():
        atomic_write_text(path, secrets.token_hex(8))
    return path.read_text().strip()


@contextlib.contextmanager
def remote_backend(job: Job, run_dir: Path, console: Console) -> Iterator[RoundRunner]:
    """``execute``'s backend for remote clients: serve while the rounds run, then tell every
    client the job is done and stop."""
    check_remote(job.cfg)
    coord = Coordinator(job, run_dir, console, run_id=run_id(run_dir))
    server, port = start_server(coord)
    coord.log("serving", address=job.cfg.remote.address, port=port, tls=not job.cfg.remote.insecure)

    def run(job: Job, state: RoundState, *, on_client: Any = None) -> dict[str, Any]:
        del on_client
        return coord.run_round(state)

    try:
        yield run
    finally:
        coord.finish()
        time.sleep(min(2.0, job.cfg.remote.deadline))  # let polling clients hear "done"
        server.stop(grace=1.0).wait()
        coord.log("stopped")
