"""``fedfm join``: a client process that holds its own data and trains when the server asks.

The client fetches the job's config from the server (after authenticating), builds the
same backbone and adapter, proves it with the backbone's hash when it joins, then polls for
tasks. For each task it runs the client half (:func:`fedfm.client.fit.fit`, as the
simulator does) on its data and streams the upload back in its wire form. It keeps its own
strategy state (SCAFFOLD's control variate, error feedback, personal tensors) between
rounds, on its disk
(:mod:`~fedfm.runtime.remote.client_state`). A lost connection is retried with exponential
backoff.

Its data is a partition of the config's registry dataset (by default the one at its
position in ``remote.clients``), or the user's own file (``--data``: any form
``data.dataset`` takes), read with the server's column keys and mapped onto
its label names (:mod:`fedfm.data.own`): a file whose columns or labels do not match is
refused before any model loads.
"""

from __future__ import annotations

import copy
import functools
import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from rich.console import Console

from fedfm.client.fit import fit
from fedfm.config import RunConfig, config_from_dict
from fedfm.data.federation import ClientData, Federation
from fedfm.data.own import own_job_config, read_own_data
from fedfm.errors import ConfigError, FedFMError, PartitionError
from fedfm.resources.types import Split
from fedfm.runtime.job import Job, build_job, encode_split
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.client_state import ClientStateStore, state_folder
from fedfm.runtime.remote.codec import (
    assemble,
    chunks,
    decode_params,
    encode_groups,
    split_groups,
)
from fedfm.runtime.remote.intake import printable

T = TypeVar("T")
# unreachable, slow, or busy (the server refuses streams past its limits): try again later
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
TASK_KINDS = ("task", "wait", "done", "refused")


@dataclass(frozen=True)
class Connection:
    """How to reach the server."""

    address: str
    client_id: str
    token: str
    ca: bytes | None = None  # the server's CA (ca.pem); None with insecure
    cert: bytes | None = None  # client certificate and key, for mutual TLS
    key: bytes | None = None
    insecure: bool = False

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", 8 << 20)]
        if self.insecure:
            return grpc.insecure_channel(self.address, options=options)
        creds = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        return grpc.secure_channel(self.address, creds, options=options)


def with_own_data(job: Job, split: Split, index: int, name: str) -> tuple[Job, ClientData]:
    """``job`` whose training pool is the client's own examples (an instruction's or a
    preference task's through the chat template, as the server encodes them), and the
    client over them."""
    train = encode_split(split, job.tokenizer, task=job.dataset.task, cfg=job.cfg)
    client = ClientData(index, name, np.arange(len(split)), np.arange(0))
    own = copy.copy(job)  # not dataclasses.replace: the fields set after the strategy stay
    own.train, own.federation = train, Federation((client,))
    return own, client


def _client_job(cfg: RunConfig, data: str | None) -> Job:
    """The job as the server's config builds it; the client's own file stands in for a
    server's dataset file, which is not on this machine."""
    if not data:
        return build_job(cfg, warmup=False)  # the server warms up; a client gets its params
    try:
        return build_job(own_job_config(cfg, data), warmup=False)
    except PartitionError as err:
        raise ConfigError(
            f"--data {data} is too small to stand in for the server's dataset here ({err}); "
            f"a client needs at least data.num_clients = {cfg.data.num_clients} rows"
        ) from None


def _retry(call: Callable[[], T], *, what: str, console: Console, tries: int) -> T:
    """``call()``, retried with exponential backoff (0.5 s doubling to 8 s) while the server
    is unreachable."""
    delay = 0.5
    for attempt in range(1, tries + 1):
        try:
            return call()
        except grpc.RpcError as err:
            details = str(err.details())
            if "handshake" in details.lower():  # retrying cannot mend a certificate
                raise FedFMError(
                    f"{what}: the TLS handshake failed ({details[-160:]}): pass the server's "
                    "ca.pem as --ca (and --cert/--key if it asks for mutual TLS)"
                ) from None
            if err.code() not in RETRYABLE or attempt == tries:
                raise FedFMError(f"{what}: {err.code().name} ({details})") from None
            why = "busy" if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "unreachable"
            console.print(f"{what}: server {why}, retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(2 * delay, 8.0)
    raise AssertionError("unreachable")


def _fetch(
    stub: pb_grpc.FederationStub, request: pb.TaskRequest, max_bytes: int
) -> tuple[pb.Header, bytes]:
    return assemble(stub.GetTask(request, timeout=60), max_bytes=max_bytes)


def _send(stub: pb_grpc.FederationStub, stream: list[pb.Chunk]) -> pb.Ack:
    return stub.SendUpdate(iter(stream), timeout=120)


def fetch_config(conn: Connection, *, console: Console, tries: int = 20) -> RunConfig:
    """The job's config, from the server (authenticated)."""
    request = pb.JoinRequest(client_id=conn.client_id, token=conn.token)

    def call() -> pb.ConfigReply:
        with conn.channel() as channel:
            return pb_grpc.FederationStub(channel).GetConfig(request, timeout=30)

    reply = _retry(call, what="fetching the config", console=console, tries=tries)
    if not reply.ok:
        raise FedFMError(f"the server refused client {conn.client_id!r}: {reply.reason}")
    return config_from_dict(tomllib.loads(reply.config_toml))


def join(
    conn: Connection,
    *,
    data: str | None = None,
    partition: int | None = None,
    console: Console | None = None,
    poll: float = 0.2,
    tries: int = 20,
    state_dir: Path | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Join the server's job and train until it is done; return what this client did.

    Args:
        model: this machine's copy of the server's model folder, when it lies at another
            path than the config's ``model.name`` (its files must be the same: the backbone
            hash the server checks is computed from them, not from the path).
        state_dir: where this client keeps its own states between rounds (one folder per
            server run, see :mod:`~fedfm.runtime.remote.client_state`); None: in memory only.
    """
    console = console or Console()
    cfg = fetch_config(conn, console=console, tries=tries)
    if conn.client_id not in cfg.remote.clients:
        raise FedFMError(f"client {conn.client_id!r} is not in the server's remote.clients")
    index = cfg.remote.clients.index(conn.client_id)
    if model:
        cfg = replace(cfg, model=replace(cfg.model, name=model))
    own = read_own_data(data, cfg) if data else None  # checked before any model loads
    job = _client_job(cfg, data)
    if own is not None:
        job, client = with_own_data(job, own, index, conn.client_id)
    else:
        client = job.federation[index if partition is None else partition]
        client = replace(client, id=index, name=conn.client_id)
    console.print(
        f"client {conn.client_id}: {client.num_examples} training examples · backbone "
        f"{job.backbone}"
    )
    with conn.channel() as channel:
        stub = pb_grpc.FederationStub(channel)
        join_request = pb.JoinRequest(
            client_id=conn.client_id, token=conn.token, backbone=job.backbone
        )

        def admit() -> str:
            reply = _retry(
                functools.partial(stub.Join, join_request, timeout=30),
                what="joining",
                console=console,
                tries=tries,
            )
            if not reply.accepted:
                raise FedFMError(f"the server refused client {conn.client_id!r}: {reply.reason}")
            return reply.session

        session = admit()
        stores: dict[str, ClientStateStore] = {}  # by server run: this client's own states
        keep = max(cfg.checkpoint.every, 1) + 1  # a resumed server goes back up to `every`
        rounds = 0
        request = pb.TaskRequest(client_id=conn.client_id, session=session)
        max_bytes = int(cfg.remote.max_update_mb * 2**20)
        while True:
            header, blob = _retry(
                functools.partial(_fetch, stub, request, max_bytes),
                what="fetching a task",
                console=console,
                tries=tries,
            )
            if header.kind not in TASK_KINDS or (header.kind == "task" and header.round < 1):
                raise FedFMError(
                    f"the server sent a '{printable(header.kind, limit=20)}' message for round "
                    f"{header.round}: not a fedfm task (is the server a fedfm server?)"
                )
            if header.kind == "done":
                break
            if header.kind == "refused":  # a restarted server forgot the session: join again
                console.print(f"the server asks to join again ({dict(header.meta)})")
                session = admit()
                request = pb.TaskRequest(client_id=conn.client_id, session=session)
                continue
            if header.kind == "wait":
                time.sleep(poll)
                continue
            tensors = decode_params(blob, max_bytes=max_bytes)
            task = split_groups(tensors, ("global", "payload", "context"))
            job.adopt_broadcast(task["context"])  # FLoRA's backbone delta, the adaptive clip
            run = dict(header.meta).get("run", "")
            if run not in stores:
                folder = state_folder(state_dir, conn.client_id, run)
                stores[run] = ClientStateStore(folder, keep=keep)
            upload, kept = fit(
                job.client_context(),
                client,
                task["global"],
                task["payload"],
                stores[run].before(header.round),
                header.round,
            )
            stores[run].save(header.round, kept)
            # the wire form travels (compressed as accounted); without a pipeline, the delta
            sent = {"wire": upload.wire} if job.pipeline else {"delta": upload.wire}
            body = encode_groups({**sent, "extras": upload.extras})
            meta = {
                "session": session,
                "num_examples": str(upload.num_examples),
                "metrics": json.dumps(upload.metrics),
                "bytes_up": str(upload.bytes_up),
                "rank": str(upload.rank),
            }
            stream = list(  # a list, not a generator: a retry sends it again
                chunks("update", body, round_=header.round, client_id=conn.client_id, meta=meta)
            )
            send = functools.partial(_send, stub, stream)
            ack = _retry(send, what="sending the update", console=console, tries=tries)
            rounds += 1
            console.print(
                f"round {header.round}: sent {len(body):,} bytes, "
                + ("accepted" if ack.ok else f"rejected ({ack.reason})")
            )
    return {"client": conn.client_id, "rounds": rounds, "examples": client.num_examples}
