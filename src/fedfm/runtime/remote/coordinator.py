"""The state a ``fedfm serve`` run shares between its gRPC handlers and its round loop.

:class:`Coordinator` publishes each round's tasks, takes updates in (every header, claim and
tensor checked, see :mod:`~fedfm.runtime.remote.intake`), and closes a round on its
deadline and quorum. Its handler methods answer any input with a reply or a refusal and
never raise, except :class:`Busy` (the client is told to retry). The gRPC face is in
:mod:`~fedfm.runtime.remote.service`.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.text import Text

from fedfm.client.fit import Upload
from fedfm.config import RunConfig, to_toml
from fedfm.data.federation import ClientData
from fedfm.models.params import Params
from fedfm.runtime.fedbuff import Arrival, FedBuffServer
from fedfm.runtime.job import Job
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote.codec import (
    CodecError,
    chunks,
    decode_params,
    encode_groups,
    read_body,
    read_header,
    split_groups,
)
from fedfm.runtime.remote.guard import Budget, Watchdog
from fedfm.runtime.remote.intake import Limits, printable, read_claims
from fedfm.runtime.remote.security import check_token
from fedfm.runtime.simulation import (
    ClientOutcome,
    Fitted,
    RoundPlan,
    RoundState,
    Transport,
    Work,
    decode_upload,
)
from fedfm.strategies.aggregate import mismatches
from fedfm.strategies.base import Update

EVENTS_FILE = "events.jsonl"
MAX_EVENTS_BYTES = 64 << 20  # events.jsonl past this keeps only the round's own events
ROUND_EVENTS = frozenset({"serving", "round", "waiting", "closed", "stopped", "suppressed"})
GIVEN_UP = "no update within {seconds:g} s of its task (late, dead or never joined)"
RESTARTED = "in flight when the server stopped (its task went with that server process)"
DRAIN_SECONDS = 60.0  # the most the end of a run waits for a client that never sent an update
THREADS = 64  # handler threads; calls beyond them are refused (RESOURCE_EXHAUSTED), not queued
HEADER_WAITS = THREADS // 2  # update streams that have not yet shown an authentic header


@dataclass
class _Task:
    round: int
    data: bytes


class Busy(CodecError):
    """The server cannot take this stream now; the client retries (RESOURCE_EXHAUSTED)."""


def _touching(stream: Iterator[pb.Chunk], touch: Callable[[], None]) -> Iterator[pb.Chunk]:
    for chunk in stream:
        touch()
        yield chunk


@dataclass
class Coordinator(Transport):
    """What the gRPC handlers and the round driver share (under one lock); the transport of
    ``fedfm serve``.

    Every handler method answers any input with a reply or a refusal, never an exception:
    a refusal is logged (``refused`` / ``rejected``) with its reason, an unexpected error
    (``error``) with the client id and the call.
    """

    job: Job
    run_dir: Path
    console: Console
    sessions: dict[str, str] = field(default_factory=dict)  # client id -> session token
    tasks: dict[str, _Task] = field(default_factory=dict)  # open round's task per member
    arrived: dict[int, ClientOutcome] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)  # open round: member -> last reason
    open_round: int = 0
    members: dict[str, int] = field(default_factory=dict)  # open round's cohort: id -> index
    like: Params = field(default_factory=dict)  # the global params: an update's names, shapes
    template: Params = field(default_factory=dict)  # the pipeline's wire form of such an update
    extras_like: Params = field(default_factory=dict)  # the strategy's extras (SCAFFOLD's dc)
    finished: bool = False
    out: dict[str, float] = field(default_factory=dict)  # client -> when it took its task
    took: dict[str, float] = field(default_factory=dict)  # client -> its longest task (s)
    _blob: tuple[int, bytes] | None = None  # FedBuff: the current version's task bytes
    _clock: tuple[float, float] | None = None  # FedBuff: the clock's value at a monotonic time
    run_id: str = ""  # one server run (kept on resume): names the clients' state folders
    lock: threading.Condition = field(default_factory=threading.Condition)
    participants: list[str] = field(default_factory=list)  # last round's, by client id
    errors: int = 0  # unexpected handler errors (logged as "error")
    suppressed: int = 0  # events left out of a full events.jsonl
    _events_bytes: int = 0

    def __post_init__(self) -> None:
        remote = self.cfg.remote
        self.watchdog = Watchdog(remote.stream_timeout)
        self.budget = Budget(int(remote.max_inflight_mb * 2**20))
        self.opening = threading.BoundedSemaphore(HEADER_WAITS)
        self.limits = Limits(remote.max_examples, self.cfg.adapter.rank, self.cfg.dpsgd.enabled)
        self.max_bytes = int(remote.max_update_mb * 2**20)
        events = self.run_dir / EVENTS_FILE
        self._events_bytes = events.stat().st_size if events.exists() else 0  # on --resume

    @property
    def cfg(self) -> RunConfig:
        return self.job.cfg

    def log(self, event: str, **fields: Any) -> None:
        """One structured line into events.jsonl, and a line on the console. Strings are
        made printable and cut short (they may come from a client); once the file holds
        ``MAX_EVENTS_BYTES``, only the round's own events are written (the rest counted)."""
        fields = {k: printable(v) if isinstance(v, str) else v for k, v in fields.items()}
        line = json.dumps({"time": time.time(), "event": event, **fields}) + "\n"
        with self.lock:
            if event not in ROUND_EVENTS and self._events_bytes + len(line) > MAX_EVENTS_BYTES:
                self.suppressed += 1
                return
            self._events_bytes += len(line)
            with (self.run_dir / EVENTS_FILE).open("a") as f:
                f.write(line)
        shown = " ".join(f"{k}={v}" for k, v in fields.items())
        self.console.print(
            Text.assemble((event, "dim"), " ", shown), highlight=False, soft_wrap=True
        )

    # ------------------------------------------------------------------ gRPC side

    def _session_ok(self, client_id: str, session: str) -> bool:
        expected = self.sessions.get(client_id)
        if not expected or not session:  # no session on either side is no match
            return False
        return hmac.compare_digest(expected.encode(), session.encode())

    def _authentic(self, client_id: str, token: str, peer: str | None) -> str | None:
        remote = self.cfg.remote
        if client_id not in remote.clients:
            return f"unknown client '{printable(client_id, limit=64)}'"
        if remote.mutual_tls and peer != client_id:
            return f"the TLS certificate is '{printable(peer, limit=64)}''s, not {client_id!r}'s"
        if not remote.insecure and not check_token(remote.tls_dir, client_id, token):
            return f"invalid credentials for {client_id!r}"
        return None

    def config(self, request: pb.JoinRequest, peer: str | None = None) -> pb.ConfigReply:
        refused = self._authentic(request.client_id, request.token, peer)
        if refused:
            self.log("refused", client=request.client_id, reason=refused)
            return pb.ConfigReply(ok=False, reason=refused)
        return pb.ConfigReply(ok=True, config_toml=to_toml(self.cfg))

    def join(self, request: pb.JoinRequest, peer: str | None = None) -> pb.JoinReply:
        refused = self._authentic(request.client_id, request.token, peer)
        if refused is None and request.backbone != self.job.backbone:
            refused = (
                f"backbone {printable(request.backbone, limit=64) or '(none)'} is not the "
                f"server's {self.job.backbone}: load the same model and adapter as the server's "
                "config"
            )
        if refused:
            self.log("refused", client=request.client_id, reason=refused)
            return pb.JoinReply(accepted=False, reason=refused)
        session = secrets.token_urlsafe(16)
        with self.lock:
            self.sessions[request.client_id] = session
        self.log("joined", client=request.client_id)
        return pb.JoinReply(accepted=True, session=session)

    def task(
        self, request: pb.TaskRequest, context: Any = None, peer: str | None = None
    ) -> Iterator[pb.Chunk]:
        """The client's task of the open round, as often as it asks until its update has
        arrived (a client restarted mid-round redoes it); else wait, done or refused."""
        cid = request.client_id
        with self.lock:  # decide under the lock, stream outside it
            known = self._session_ok(cid, request.session) and (
                not self.cfg.remote.mutual_tls or peer == cid
            )
            finished, open_round = self.finished, self.open_round
            task = self.tasks.get(cid) if known and not finished else None
            if task is not None and self.members.get(cid) in self.arrived:
                task = None  # its update is in: nothing more to do this round
            if known:
                self._back(cid)
                if task is not None:  # it goes out with a task (see drain)
                    self.out[cid] = time.monotonic()
        if not known:
            yield from chunks("refused", b"", round_=0, meta={"reason": "unknown session"})
            return
        if finished or task is None:
            yield from chunks("done" if finished else "wait", b"", round_=open_round)
            return
        self.log("task", client=cid, round=task.round, bytes=len(task.data))
        stream = chunks(
            "task", task.data, round_=task.round, client_id=cid, meta={"run": self.run_id}
        )
        with self.watchdog.watch(context) as touch:
            for chunk in stream:
                yield chunk
                touch()

    def _admissible(self, header: pb.Header, peer: str | None) -> None:
        """Whether ``header`` may open an update of the open round (under the lock)."""
        cid, remote = header.client_id, self.cfg.remote
        if cid not in remote.clients:
            raise CodecError(f"unknown client '{printable(cid, limit=64)}'")
        if remote.mutual_tls and peer != cid:
            raise CodecError(
                f"the TLS certificate is '{printable(peer, limit=64)}''s, not {cid!r}'s"
            )
        if not self._session_ok(cid, header.meta.get("session", "")):
            raise CodecError(f"unknown session for client {cid!r}")
        self._back(cid)  # whatever comes of its update, it is back (see drain)
        if self.finished:  # still training when the run ended: it hears so now
            raise CodecError("the run is done: this update came too late to be used")
        if header.kind != "update":
            raise CodecError(f"a stream of kind '{printable(header.kind, limit=20)}', not 'update'")
        if self.cfg.asynchronous.enabled:  # each client's own task, not one open round
            task = self.tasks.get(cid)
            if task is None:
                raise CodecError(f"{cid!r} has no task in flight")
            if header.round != task.round:
                raise CodecError(
                    f"update for round {header.round}, but {cid!r}'s task is for round {task.round}"
                )
        elif header.round != self.open_round:
            raise CodecError(
                f"update for round {header.round}, but round {self.open_round} is open"
            )
        if cid not in self.members:
            raise CodecError(f"{cid!r} is not in round {header.round}'s cohort")
        if self.members[cid] in self.arrived:
            raise CodecError(f"a second update from {cid!r} in one round")

    def submit(
        self, stream: Iterator[pb.Chunk], context: Any = None, peer: str | None = None
    ) -> pb.Ack:
        """Take one update stream: the header is checked (session, round, cohort, size)
        before a byte of the body is read, then the body, then every claim it makes.

        Raises:
            Busy: too many streams are opening, or too many bytes are in flight.
        """
        client_id, reserved, authentic = "?", False, False
        if not self.opening.acquire(blocking=False):
            raise Busy(f"over {HEADER_WAITS} update streams are opening at once")
        try:
            with self.watchdog.watch(context) as touch:
                chunks_in = _touching(iter(stream), touch)
                try:
                    header = read_header(chunks_in, max_bytes=self.max_bytes)
                finally:
                    self.opening.release()
                client_id = header.client_id
                with self.lock:
                    self._admissible(header, peer)
                authentic = True  # its session is the member's: its refusals are on record
                refused = self.budget.reserve(client_id, header.total_bytes)
                if refused:
                    raise Busy(refused)
                reserved = True
                data = read_body(chunks_in, header)
                update = _decode_update(self, header, data)
                with self.lock:  # checked and taken in one step: the round may have closed
                    self._admissible(header, peer)
                    self.arrived[update.client_id] = ClientOutcome(update)
                    self.lock.notify_all()
        except CodecError as err:
            self.log("rejected", client=client_id, reason=str(err))
            with self.lock:  # a member's last refusal goes into the round's record
                if authentic and client_id in self.members and not isinstance(err, Busy):
                    self.rejected[self.members[client_id]] = printable(err)
            if isinstance(err, Busy):
                raise
            return pb.Ack(ok=False, reason=str(err))
        except Exception as err:  # a dropped or stalled stream, or a bug: never out
            if context is not None and not context.is_active():
                reason = f"the stream stalled (over {self.cfg.remote.stream_timeout} s) or dropped"
                self.log("rejected", client=client_id, reason=reason)
                return pb.Ack(ok=False, reason=reason)
            self._error("SendUpdate", client_id, err)
            return pb.Ack(ok=False, reason="the server could not take this update (logged)")
        finally:
            if reserved:
                self.budget.release(client_id)
        self.log("update", client=client_id, round=header.round, bytes=len(data))
        return pb.Ack(ok=True)

    def _error(self, call: str, client_id: str, err: BaseException) -> None:
        with self.lock:
            self.errors += 1
        self.log("error", call=call, client=client_id, error=f"{type(err).__name__}: {err}")

    # ------------------------------------------------------------------ round loop

    def fit(
        self, job: Job, state: RoundState, plan: RoundPlan, clients: list[ClientData]
    ) -> Iterator[Fitted]:
        """Publish the round's task to every member, wait for their updates (see
        :meth:`_await`), then yield each member's update or why it has none."""
        remote = self.cfg.remote
        members = {remote.clients[c.id]: c.id for c in clients}
        blob = self._task_blob(job, state, plan.payload)
        with self.lock:
            self.open_round, self.arrived, self.members = plan.round, {}, members
            self.rejected = {}
            self.tasks = {name: _Task(plan.round, blob) for name in members}
        self.log("round", round=plan.round, cohort=sorted(members))
        arrived = self._await(plan.round, len(members))
        rejected = dict(self.rejected)
        self.participants = sorted(remote.clients[c] for c in arrived)
        for client in clients:
            if client.id in arrived:
                yield arrived[client.id], None
                continue
            reason = "missed the deadline (late, dead or never joined)"
            if client.id in rejected:
                reason = f"{reason}; its update was rejected: {rejected[client.id]}"
            yield None, reason

    def _task_blob(self, job: Job, state: RoundState, payload: Params) -> bytes:
        """A task's bytes: the global params, the strategy's payload and the server's
        broadcast (FLoRA's backbone delta, the adaptive clip norm). The first call also
        learns what an update must look like."""
        context = job.broadcast()
        blob = encode_groups(
            {"global": state.global_params, "payload": payload, "context": context}
        )
        if not self.like:  # names and shapes stay the same from round to round
            self.like = {k: torch.zeros_like(v) for k, v in state.global_params.items()}
            self.template = wire_template(job, self.like)
            extras, _ = job.strategy.client_finish(
                self.like, self.like, payload, {}, steps=1, lr=self.cfg.client.lr
            )
            self.extras_like = {k: torch.zeros_like(v) for k, v in extras.items()}
        return blob

    def record(self) -> dict[str, Any]:
        if self.cfg.asynchronous.enabled:  # who arrived with an update since the last step
            participants, self.participants = sorted(self.participants), []
            return {"participants": participants}
        return {"participants": self.participants}

    # ------------------------------------------------------------------ FedBuff

    asynchronous = True

    def now(self, server: FedBuffServer[Fitted]) -> float:
        """The server's clock: wall seconds since the run's first dispatch (a resumed run
        continues from the checkpoint's clock)."""
        if self._clock is None:
            self._clock = (server.clock, time.monotonic())
        base, since = self._clock
        return base + time.monotonic() - since

    def launch(
        self,
        job: Job,
        state: RoundState,
        server: FedBuffServer[Fitted],
        client: ClientData,
        work: Work,
        payload: Params,
        round_: int,
    ) -> None:
        """Publish ``client``'s task (the current global params, toward step ``round_``);
        the server gives up on it ``remote.deadline × (1 + remote.patience)`` s later."""
        remote = self.cfg.remote
        if self._blob is None or self._blob[0] != server.version:  # one per version
            self._blob = (server.version, self._task_blob(job, state, payload))
        name, blob = remote.clients[client.id], self._blob[1]
        give_up = remote.deadline * (1 + remote.patience)
        with self.lock:  # (the clock starts with the first dispatch)
            server.dispatch(
                client=client.id,
                duration=self.now(server) - server.clock + give_up,
                payload=(None, GIVEN_UP.format(seconds=give_up)),
            )
            self.members[name] = client.id
            self.rejected.pop(client.id, None)
            self.tasks[name] = _Task(round_, blob)
        self.log("dispatched", client=name, round=round_, version=server.version)

    def arrival(self, job: Job, server: FedBuffServer[Fitted]) -> Arrival[Fitted]:
        """The next update the network delivers, or the first client in flight past the
        time to give up on it (with the reason its last update was rejected, if one was)."""
        with self.lock:
            while True:
                now = self.now(server)
                if self.arrived:  # in the order they came
                    cid = next(iter(self.arrived))
                    fitted: Fitted = (self.arrived.pop(cid), None)
                    self.participants.append(self.cfg.remote.clients[cid])
                    break
                first = server.in_flight[0]
                if now >= first.finish:
                    cid, reason = first.client, first.payload[1]
                    if cid in self.rejected:
                        reason = f"{reason}; its update was rejected: {self.rejected[cid]}"
                    fitted = (None, reason)
                    break
                self.lock.wait(timeout=min(first.finish - now, 1.0))
            name = self.cfg.remote.clients[cid]
            self.tasks.pop(name, None)  # a late update is refused from now on
            self.members.pop(name, None)
            self.rejected.pop(cid, None)
            arrival = server.arrive(cid, now, fitted)
        if fitted[0] is None:
            self.log("given_up", client=name, reason=fitted[1])
        return arrival

    def adopt(self, job: Job, server: FedBuffServer[Fitted]) -> list[Arrival[Fitted]]:
        """A resumed run's clients in flight: their tasks went with the old server process,
        so each is taken off as lost (and replaced at this step)."""
        with self.lock:
            lost = [f.client for f in server.in_flight if f.client not in self.members.values()]
        now = self.now(server)
        return [server.arrive(cid, now, (None, RESTARTED)) for cid in lost]

    def _await(self, round_: int, cohort: int) -> dict[int, ClientOutcome]:
        """The updates of the open round, once every member has answered, or at a deadline
        with at least the quorum, or after ``remote.patience`` more deadlines with whatever
        arrived (at least one update); then the round is closed to late updates."""
        remote = self.cfg.remote
        need = math.ceil(remote.quorum * cohort)
        deadline, extra = time.monotonic() + remote.deadline, 0
        with self.lock:
            while len(self.arrived) < cohort:
                left = deadline - time.monotonic()
                if left > 0:
                    self.lock.wait(timeout=min(left, 1.0))
                    continue
                got = len(self.arrived)
                if got >= need or (got and extra >= remote.patience):
                    break
                extra += 1  # below the quorum (or nothing yet): wait once more, and say so
                deadline = time.monotonic() + remote.deadline
                self.lock.release()
                self.log("waiting", round=round_, arrived=got, need=need)
                self.lock.acquire()
            arrived, self.tasks, self.open_round, self.members = dict(self.arrived), {}, 0, {}
        if len(arrived) < need:
            self.log("closed", round=round_, arrived=len(arrived), need=need)
        return arrived

    def finish(self) -> None:
        with self.lock:
            self.finished = True

    def _back(self, cid: str) -> None:
        """A client out with a task has come back (polled or sent): how long it took is kept
        (under the lock)."""
        if cid in self.out:
            took = time.monotonic() - self.out.pop(cid)
            self.took[cid] = max(self.took.get(cid, 0.0), took)
            self.lock.notify_all()

    def drain(self) -> None:
        """After :meth:`finish`: wait for the clients still out with a task (a task of a
        round that closed without them, or FedBuff's clients in flight) to come back and be
        told the run is done, so none is left retrying a server that has gone. Each is
        waited for up to twice its longest task so far plus a second after it took its task,
        or ``min(remote.deadline, DRAIN_SECONDS)`` if it never finished one."""
        unknown = min(self.cfg.remote.deadline, DRAIN_SECONDS)
        with self.lock:
            while self.out:
                limit = max(
                    since + (2 * self.took[c] + 1.0 if c in self.took else unknown)
                    for c, since in self.out.items()
                )
                left = limit - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(timeout=min(left, 1.0))
            out = sorted(self.out)
        if out:
            self.log("undrained", clients=out)


def wire_template(job: Job, like: Params) -> Params:
    """What a client puts on the wire for an update shaped like ``like`` (its personal tensors
    stay home): names, shapes and dtypes to check an incoming upload against before it is
    decoded. Without an update pipeline, the shared delta itself."""
    shared = {k: v for k, v in like.items() if k not in job.personal}
    if not job.pipeline:
        return shared
    wire, _, _ = job.pipeline.client(shared, {}, torch.Generator().manual_seed(0))
    return wire


def _wire(coord: Coordinator, groups: dict[str, Params]) -> Params:
    """The upload's wire form: the ``delta`` group without an update pipeline, the ``wire``
    group with one; its names and shapes checked against the server's template."""
    job, wire = coord.job, groups["wire"]
    if not job.pipeline:
        if wire:
            raise CodecError("a wire form, but this server's config has no update pipeline")
        wire = groups["delta"]
        wrong = mismatches(wire, coord.template)
        if wrong:
            raise CodecError(f"malformed delta: {wrong[:3]}")
        return wire
    if groups["delta"] or not wire:
        raise CodecError(
            "a decoded delta, but this server's config has an update pipeline (compression or "
            "DP clipping): the client must send the pipeline's wire form (same fedfm version?)"
        )
    wrong = mismatches(wire, coord.template)
    if wrong:
        raise CodecError(f"malformed wire form: {wrong[:3]}")
    return wire


def _decode_update(coord: Coordinator, header: pb.Header, data: bytes) -> Update:
    """The update of a checked stream, decoded once (:func:`decode_upload`)."""
    meta = dict(header.meta)
    claims = read_claims(meta, coord.limits, payload_bytes=len(data))
    tensors = decode_params(data, max_bytes=coord.max_bytes)
    groups = split_groups(tensors, ("delta", "wire", "extras"))
    wire = _wire(coord, groups)
    wrong = mismatches(groups["extras"], coord.extras_like)
    if wrong:
        raise CodecError(f"malformed extras: {wrong[:3]}")
    upload = Upload(
        client_id=coord.cfg.remote.clients.index(header.client_id),
        wire=wire,
        num_examples=claims.num_examples,
        metrics=claims.metrics,
        extras=groups["extras"],
        bytes_up=claims.bytes_up,
        rank=claims.rank,
    )
    try:
        return decode_upload(coord.job, upload)
    except (IndexError, RuntimeError) as err:  # e.g. a top-k position out of range
        raise CodecError(f"wire form does not decode: {err}") from None
