"""Asynchronous rounds (``[asynchronous]``, FedBuff): the server's step, whichever
transport carries the clients.

A round of an asynchronous run is one server step: the server applies the buffer once
``asynchronous.buffer`` (K) updates have arrived.

1. at the start ``asynchronous.concurrency`` clients are dispatched (later: one replacement
   for every update the previous step applied), drawn without replacement among the
   idle clients (:func:`~fedfm.runtime.fedbuff.draw_clients`, a pure function of seed and
   version), each from the *current* global params and version
   (:meth:`~fedfm.runtime.simulation.Transport.launch`);
2. the next client arrives (:meth:`~fedfm.runtime.simulation.Transport.arrival`); it is taken
   in as in a synchronous round (a failed, malformed or non-finite update is recorded in
   ``excluded``, and its client replaced at once); a valid one joins the buffer with
   staleness τ = current version - the version it started from;
3. when the buffer holds K updates (or nothing is left in flight) the server steps: each
   delta is multiplied by ``s(τ)`` (:func:`~fedfm.runtime.fedbuff.staleness_weight`), the
   update chain reduces them in dispatch order and the strategy aggregates, exactly as
   :func:`~fedfm.runtime.simulation.finish_round` does for a synchronous round.

Three transports carry it. In process (``backend = "simulation"``) a client trains at once
when dispatched and arrives on the simulated clock of the ``[system]`` speeds (a client of
speed s needs ``steps / s`` time units after its dispatch). On Ray (``backend = "ray"``) the
clock is the same, but a dispatched client is dealt to a worker and its result fetched when
it arrives (or when the step ends), so the clients dispatched together train in parallel.
With ``fedfm serve`` (``backend = "remote"``) the dispatch publishes the client's task,
the clock is the server's wall clock in seconds, and clients arrive in the order the network
delivers their updates; a client still out ``remote.deadline × (1 + remote.patience)``
seconds after its dispatch is given up on (recorded in ``excluded``) and replaced; so is one
in flight when a resumed run's server stopped.

With τ = 0 for every update (K = concurrency = the cohort size) this is FedAvg's round, bit
for bit. The server's state (clock, version, clients in flight with their updates) lives in
the ``asynchronous`` feature, which saves it in checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from fedfm.client.state import ClientState
from fedfm.errors import FedFMError
from fedfm.models.params import Params
from fedfm.runtime.fedbuff import Arrival, FedBuffServer, InFlight, draw_clients, staleness_weight
from fedfm.runtime.job import Job
from fedfm.runtime.simulation import (
    ClientOutcome,
    Fitted,
    RoundIntake,
    RoundPlan,
    RoundState,
    Transport,
    download_bytes,
    finish_round,
    plan_work,
    receive,
    screen,
)
from fedfm.runtime.transports import in_process
from fedfm.strategies.base import Update


@dataclass
class AsyncIntake(RoundIntake):
    """A server step's intake plus what the record says of staleness and the clock.

    Attributes:
        staleness: τ of each applied update, in the order applied (dispatch order).
        arrived_at: the clock's time at which each applied update arrived (same order).
        sim_clock: the simulated time of the step (cumulative since the start).
    """

    staleness: list[int] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)
    sim_clock: float = 0.0


def run_async_round(
    job: Job,
    state: RoundState,
    *,
    on_client: Callable[[int], None] | None = None,
    transport: Transport | None = None,
) -> dict[str, Any]:
    """Run server step ``state.round + 1`` of an asynchronous run in place on ``state``;
    return its record (a synchronous round's, plus ``staleness``, ``arrived_at``,
    ``staleness_max`` and ``sim_clock``)."""
    transport = transport or in_process.InProcess()
    if not transport.asynchronous:
        raise FedFMError(
            f"asynchronous.enabled = true cannot run on the {type(transport).__name__} "
            'transport (it implements no launch/arrival): set backend = "simulation", "ray" '
            'or "remote", or asynchronous.enabled = false'
        )
    feature = job.feature("asynchronous")
    server: FedBuffServer[Fitted] = feature.server
    if server.version != state.round:
        raise FedFMError(
            f"the asynchronous server is at version {server.version}, the run at "
            f"round {state.round}: the checkpoint does not match its run"
        )
    started, since = time.perf_counter(), server.clock
    job.apply_backbone_delta()
    lost = transport.adopt(job, server)  # a resumed server's remote clients are gone
    sender = Dispatcher(job, state, feature, transport)
    sender.send(feature.concurrency if server.tickets == 0 else feature.pending)
    intake, arrived = _take_in(job, state, feature, sender, lost, on_client)
    transport.settle(job, server)  # (Ray) every result of this version into its flight
    held = server.flush()
    intake.updates = [weighted(a, feature) for a in held]
    intake.staleness = [a.staleness for a in held]
    intake.arrived_at = [a.time for a in held]
    intake.sim_time, intake.sim_clock = server.clock - since, server.clock
    plan = RoundPlan(
        round=server.version,
        cohort=arrived,
        clients=[job.federation[c] for c in arrived],
        payload={},
        work={},
        bytes_down=sender.bytes_down,
        started=started,
    )
    record = finish_round(job, state, plan, intake)
    record.update(transport.record())
    return record


def _take_in(
    job: Job,
    state: RoundState,
    feature: Any,
    sender: Dispatcher,
    lost: list[Arrival[Fitted]],
    on_client: Callable[[int], None] | None,
) -> tuple[AsyncIntake, list[int]]:
    """Arrivals (``lost`` first, then as the transport delivers them) until the buffer is
    full or nothing is in flight: each taken in as a synchronous round takes in a client;
    the valid ones wait in the buffer. A client that brings no valid update is replaced at
    once (at most ``concurrency`` times a step, so clients that always fail cannot keep a
    step open; past that, at the next step), the others at the next step."""
    server: FedBuffServer[Fitted] = feature.server
    intake, arrived = AsyncIntake(), []
    feature.pending, replaced = 0, 0

    def arrivals() -> Iterator[Arrival[Fitted]]:
        yield from lost
        while not server.full and server.in_flight:
            yield sender.transport.arrival(job, server)

    for arrival in arrivals():
        cid = arrival.flight.client
        arrived.append(cid)
        outcome, error = arrival.flight.payload
        receive(job, state, intake, cid, outcome, error)
        screen(state, intake)
        if intake.updates:  # valid: it waits in the buffer, not in the intake
            intake.updates.pop()
            server.hold(arrival)
            feature.pending += 1
        elif replaced < feature.concurrency:
            replaced += sender.send(1)
        else:
            feature.pending += 1
        if on_client is not None:
            on_client(cid)
    return intake, arrived


def weighted(arrival: Arrival[Fitted], feature: Any) -> Update:
    """An arrival's update with its delta multiplied by ``s(τ)`` (the same update at 1.0)."""
    outcome = arrival.flight.payload[0]
    assert outcome is not None  # only valid arrivals are held
    cfg = feature.cfg.asynchronous
    w = staleness_weight(arrival.staleness, cfg.staleness, cfg.staleness_a, cfg.staleness_b)
    update = outcome.update
    if w == 1.0:
        return update
    return replace(update, delta={k: v * w for k, v in update.delta.items()})


@dataclass
class Dispatcher:
    """Sends clients off from the current global params and version (drawn among the idle
    ones) and counts the bytes sent down in a step."""

    job: Job
    state: RoundState
    feature: Any
    transport: Transport
    bytes_down: int = 0
    _by_rank: dict[int, int] = field(default_factory=dict)  # download_bytes' sizes

    def send(self, n: int) -> int:
        """Dispatch up to ``n`` idle clients; return how many went."""
        job, server = self.job, self.feature.server
        busy = server.busy()
        idle = [c for c in self.feature.eligible if c not in busy]
        round_ = server.version + 1  # the step these clients train toward (seeds their batches)
        payload = job.strategy.payload(round_)
        chosen = draw_clients(idle, n, seed=job.cfg.seed, version=server.version)
        for cid in chosen:
            client = job.federation[cid]
            work = plan_work(job, client)
            self.transport.launch(job, self.state, server, client, work, payload, round_)
            params = self.state.global_params
            self.bytes_down += download_bytes(job, params, payload, work.rank, self._by_rank)
            self.bytes_down += job.strategy.extra_down_bytes(cid, round_)
        return len(chosen)


# ---------------------------------------------------------------- checkpoints

_GROUPS = ("delta", "extras", "strategy", "personal", "pipeline")


def server_state(server: FedBuffServer[Fitted]) -> tuple[dict[str, Any], Params]:
    """The server's state as JSON values and tensors named ``<ticket>/<group>/<param>``
    (taken between steps, when the buffer is empty: every held update is in flight)."""
    if server.buffer:
        raise FedFMError("the asynchronous buffer is saved only between server steps")
    flights, tensors = [], {}
    for flight in sorted(server.in_flight):
        outcome, error = flight.payload
        entry: dict[str, Any] = {
            "finish": flight.finish,
            "ticket": flight.ticket,
            "client": flight.client,
            "version": flight.version,
            "error": error,
        }
        if outcome is not None:
            u = outcome.update
            entry["update"] = {
                "client_id": u.client_id,
                "num_examples": u.num_examples,
                "metrics": dict(u.metrics),
                "bytes_up": u.bytes_up,
                "rank": u.rank,
            }
            groups = (u.delta, u.extras, *_kept(outcome.state))
            for group, params in zip(_GROUPS, groups, strict=True):
                tensors.update({f"{flight.ticket}/{group}/{k}": v for k, v in params.items()})
        flights.append(entry)
    meta = {
        "clock": server.clock,
        "version": server.version,
        "tickets": server.tickets,
        "in_flight": flights,
    }
    return meta, tensors


def _kept(kept: ClientState) -> tuple[Params, Params, Params]:
    return kept.strategy, kept.personal, kept.pipeline


def load_server(size: int, meta: dict[str, Any], tensors: Params) -> FedBuffServer[Fitted]:
    """The server :func:`server_state` saved (its buffer size ``size``)."""
    by_group: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        number, group, param = name.split("/", 2)
        by_group.setdefault((int(number), group), {})[param] = tensor
    flights: list[InFlight[Fitted]] = []
    for entry in meta["in_flight"]:
        ticket = int(entry["ticket"])
        fitted: Fitted = (None, entry["error"])
        if entry.get("update") is not None:
            g = [by_group.get((ticket, group), {}) for group in _GROUPS]
            update = Update(delta=g[0], extras=g[1], **entry["update"])
            fitted = (ClientOutcome(update, ClientState(g[2], g[3], g[4])), None)
        flight = InFlight(
            float(entry["finish"]), ticket, int(entry["client"]), int(entry["version"]), fitted
        )
        flights.append(flight)
    return FedBuffServer(
        size=size,
        clock=float(meta["clock"]),
        version=int(meta["version"]),
        tickets=int(meta["tickets"]),
        in_flight=sorted(flights),  # a sorted list is a heap
    )
