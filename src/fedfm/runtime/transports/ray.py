"""Ray backend (``backend = "ray"``): the simulation's clients train on Ray actors.

Each actor (a :class:`Worker`) builds the job once, so it holds one frozen backbone and the
whole federation's data, and then trains whichever clients it is handed, one after another,
with the same :func:`~fedfm.client.fit.fit` as in process, and sends back the upload's wire
form, which the driver decodes. The server half of every round (cohort, aggregation,
evaluation, checkpoints) stays in the driver.

A round puts the global params, the payload and the server's broadcast (FLoRA's backbone
delta, the adaptive clip norm) in Ray's object store once and hands each actor a reference
(:meth:`Worker.begin`); then the cohort's clients are dealt out one at a time to whichever
actor is free, each with the states it keeps between rounds (strategy state, personal
tensors, error feedback), which come back with its update. Clients are seeded by (seed,
round, client), so which actor trains a client does not change its update: the run gives
the in-process metrics for the same seed (bit for bit at the same torch thread count).

Example:
    ``fedfm run job.toml --set backend=ray --set ray.workers=2``; ``ray.address = "auto"``
    joins a running cluster (``ray start --head`` on one machine, ``ray start --address``
    on the others), where every node needs fedfm and its offline resources installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fedfm.client.fit import Upload, fit
from fedfm.client.state import ClientState
from fedfm.config import RunConfig
from fedfm.data.federation import ClientData
from fedfm.errors import ConfigError, FedFMError
from fedfm.models.params import Params
from fedfm.runtime.fedbuff import Arrival, FedBuffServer
from fedfm.runtime.job import Job, build_job
from fedfm.runtime.simulation import (
    ClientOutcome,
    Fitted,
    RoundPlan,
    RoundState,
    Transport,
    Work,
    decode_upload,
)
from fedfm.runtime.transports.in_process import FAILURES
from fedfm.synthetic.dataset import SyntheticSet

# passed on to workers started by a cluster (a local Ray inherits the driver's environment)
ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FEDFM_CACHE")


class Worker:
    """One actor: one copy of the job's model and data, training many clients in turn."""

    def __init__(self, cfg: RunConfig, synthetic: SyntheticSet | None, threads: int) -> None:
        torch.set_num_threads(threads)
        self.job = build_job(cfg, synthetic=synthetic, warmup=False)
        self.round = 0
        self.global_params: Params = {}
        self.payload: Params = {}

    def backbone(self) -> str:
        return self.job.backbone

    def begin(self, round_: int, global_params: Params, payload: Params, context: Params) -> None:
        """Take round ``round_``'s params, payload and the server's broadcast."""
        self.round, self.global_params, self.payload = round_, global_params, payload
        self.job.adopt_broadcast(context)

    def fit(
        self, client_id: int, work: Work, state: ClientState
    ) -> tuple[Upload, ClientState] | str:
        """Train one client of the current round from the states it left last time: its
        upload (the wire form) and new states, or why it failed."""
        job = self.job
        client = job.federation.pooled() if job.strategy.pooled else job.federation[client_id]
        try:
            return fit(
                job.client_context(),
                client,
                self.global_params,
                self.payload,
                state,
                self.round,
                rank=work.rank,
                steps=work.override_steps,
                layers=work.layers,
            )
        except FAILURES as err:
            return f"{type(err).__name__}: {err}"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` (or ``ray://HOST:PORT``) that nothing listens on: Ray
    itself retries such an address for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "" (a local Ray) or "auto"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise FedFMError(
            f"ray.address = {address!r}: nothing answers at {host}:{port} ({err}); start the "
            'cluster with `ray start --head`, or set ray.address = "" to start a local Ray'
        ) from None


def _connect(cfg: RunConfig, console: Console) -> bool:
    """Start or join Ray; ``True`` if this call started it (and so shuts it down)."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            'backend = "ray" needs Ray: pip install "ray>=2.60" (or pip install -e ".[ray]")'
        ) from err
    _check_reachable(cfg.ray.address)
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    try:
        ray.init(
            address=cfg.ray.address or None,
            runtime_env={"env_vars": env} if env else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except ConnectionError as err:
        raise FedFMError(
            f"ray.address = {cfg.ray.address!r}: no Ray cluster answered ({err}); start one "
            'with `ray start --head`, or set ray.address = "" to start a local Ray'
        ) from err
    where = cfg.ray.address or "a local Ray"
    console.print(f"ray: connected to {where} ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    return True


ATTEMPTS = 2  # a client whose worker dies is dealt again once, then counted as failed
_PENDING = "on its Ray worker"  # a dealt FedBuff client's result not fetched yet


class WorkerPool(Transport):
    """``ray.workers`` actors (one per CPU when 0) with checked backbones; :meth:`fit` deals
    the cohort's clients to them.

    A worker that dies (its process killed, its node lost) is replaced by a fresh one, which
    loads the model again, and the client it was training is dealt again; a client whose
    worker dies twice is recorded as failed, so the round goes on without it.
    """

    def __init__(self, job: Job, console: Console) -> None:
        import ray

        rc = job.cfg.ray
        self.job, self.console = job, console
        self._step: tuple[int, int, list[Any]] | None = None  # FedBuff: version, round, refs
        # ticket: (future, actor, attempt, work, client, its states) of a result not fetched
        self._pending: dict[int, tuple[Any, Any, int, Work, int, ClientState]] = {}
        self._successors: dict[int, Any] = {}  # id of a dead worker: the one that replaced it
        self.threads = rc.threads or max(1, int(rc.cpus_per_worker))
        self.actor_class: Any = ray.remote(Worker).options(num_cpus=rc.cpus_per_worker)
        count = rc.workers or max(
            1, int(ray.cluster_resources().get("CPU", 1) // rc.cpus_per_worker)
        )
        with console.status(f"ray: starting {count} workers (each loads the model) ..."):
            self.actors = self._start(count)
        console.print(
            f"ray: {count} workers × {self.threads} torch threads, backbone {job.backbone}"
        )

    def _start(self, count: int) -> list[Any]:
        import ray

        job = self.job
        synthetic = job.feature("synthetic")  # the set itself: a worker must not write its own
        given = synthetic.set if synthetic is not None else None
        actors = [self.actor_class.remote(job.cfg, given, self.threads) for _ in range(count)]
        backbones = ray.get([a.backbone.remote() for a in actors])
        wrong = [b for b in backbones if b != job.backbone]
        if wrong:
            raise FedFMError(
                f"{len(wrong)} Ray worker(s) loaded backbone {wrong[0]}, not the driver's "
                f"{job.backbone}: install the same fedfm and model files on every node"
            )
        return actors

    def _replace(self, dead: Any, shared: list[Any], round_: int, why: Exception) -> Any:
        import ray

        self.console.print(f"[yellow]ray: a worker died ({type(why).__name__}); starting another")
        with contextlib.suppress(Exception):
            ray.kill(dead)
        (fresh,) = self._start(1)
        ray.get(fresh.begin.remote(round_, *shared))
        self.actors[self.actors.index(dead)] = fresh
        return fresh

    def _begin(self, round_: int, shared: list[Any]) -> None:
        import ray

        for actor, ref in [(a, a.begin.remote(round_, *shared)) for a in self.actors]:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self._replace(actor, shared, round_, err)

    def fit(
        self, job: Job, state: RoundState, plan: RoundPlan, clients: list[Any]
    ) -> Iterator[Fitted]:
        import ray

        shared = [ray.put(x) for x in (state.global_params, plan.payload, job.broadcast())]
        self._begin(plan.round, shared)
        queue = deque((i, client, 1) for i, client in enumerate(clients))
        running: dict[Any, tuple[Any, int, Any, int]] = {}  # future -> actor, position, ...
        done: dict[int, Fitted] = {}

        def hand_out(actor: Any) -> None:
            if queue:
                i, client, attempt = queue.popleft()
                future = actor.fit.remote(client.id, plan.work[client.id], state.client(client.id))
                running[future] = (actor, i, client, attempt)

        for actor in list(self.actors):
            hand_out(actor)
        for i in range(len(clients)):
            while i not in done:
                (ready,), _ = ray.wait(list(running), num_returns=1)
                actor, position, client, attempt = running.pop(ready)
                try:
                    done[position] = self._arrived(job, ray.get(ready), plan.work[client.id])
                except ray.exceptions.RayActorError as err:
                    if attempt < ATTEMPTS:  # first in line again, on whichever worker is free
                        queue.appendleft((position, client, attempt + 1))
                    else:
                        done[position] = (None, f"its Ray worker died {ATTEMPTS} times")
                    actor = self._replace(actor, shared, plan.round, err)
                hand_out(actor)
            yield done.pop(i)

    # ------------------------------------------------------------------ FedBuff

    asynchronous = True

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
        """Deal ``client`` to a worker now (the step's params are sent to every worker once
        per version); it arrives ``steps / speed`` later on the simulated clock, its result
        fetched from the worker when it is needed (:meth:`arrival`, :meth:`settle`)."""
        import ray

        if self._step is None or self._step[0] != server.version:
            shared = [ray.put(x) for x in (state.global_params, payload, job.broadcast())]
            for actor in self.actors:  # a worker runs its calls in order: fits see these
                actor.begin.remote(round_, *shared)
            self._step = (server.version, round_, shared)
        ticket = server.tickets
        actor = self.actors[ticket % len(self.actors)]
        kept = state.client(client.id)
        future = actor.fit.remote(client.id, work, kept)
        self._pending[ticket] = (future, actor, 1, work, client.id, kept)
        server.dispatch(
            client=client.id, duration=work.full_steps / work.speed, payload=(None, _PENDING)
        )

    def arrival(self, job: Job, server: FedBuffServer[Fitted]) -> Arrival[Fitted]:
        """The earliest finish on the simulated clock, its result fetched from its worker."""
        arrival = server.pop()
        flight = arrival.flight
        if flight.ticket not in self._pending:  # restored from a checkpoint: already here
            return arrival
        fitted = self._result(job, flight.ticket)
        return Arrival(replace(flight, payload=fitted), arrival.time, arrival.staleness)

    def settle(self, job: Job, server: FedBuffServer[Fitted]) -> None:
        """Fetch every result still on a worker into its flight (a checkpoint saves them)."""
        flights = [
            replace(f, payload=self._result(job, f.ticket)) if f.ticket in self._pending else f
            for f in server.in_flight
        ]
        server.in_flight = sorted(flights)  # a sorted list is a heap

    def _result(self, job: Job, ticket: int) -> Fitted:
        """A dealt client's result; a worker that died is replaced and the client dealt
        again once, with the same version's params."""
        import ray

        future, actor, attempt, work, cid, kept = self._pending.pop(ticket)
        assert self._step is not None
        while True:
            try:
                return self._arrived(job, ray.get(future), work)
            except ray.exceptions.RayActorError as err:
                _, round_, shared = self._step
                fresh = self._successors.get(id(actor))  # another client found it dead first
                if fresh is None:
                    fresh = self._successors[id(actor)] = self._replace(actor, shared, round_, err)
                if attempt >= ATTEMPTS:
                    return None, f"its Ray worker died {ATTEMPTS} times"
                future, actor, attempt = fresh.fit.remote(cid, work, kept), fresh, attempt + 1

    @staticmethod
    def _arrived(job: Job, result: tuple[Upload, ClientState] | str, work: Work) -> Fitted:
        if isinstance(result, str):
            return None, result
        upload, kept = result
        return ClientOutcome(decode_upload(job, upload, layers=work.layers), kept), None

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


@contextlib.contextmanager
def open_ray(job: Job, run_dir: Path, console: Console) -> Iterator[Transport]:
    """The transport of ``backend = "ray"``: actors for the run, then gone."""
    del run_dir
    started = _connect(job.cfg, console)
    import ray

    pool: WorkerPool | None = None
    try:
        pool = WorkerPool(job, console)
        yield pool
    finally:
        if pool is not None:
            pool.close()
        if started:
            ray.shutdown()
