"""FedBuff's server-side logic as pure code: staleness weights, the event queue of clients in
flight, the buffer of arrived updates (Nguyen et al., "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022).

Nothing here trains, sends or imports torch: a client in flight carries an opaque payload
(in the simulator, its decoded update), so the same :class:`FedBuffServer` can serve the
in-process driver (:mod:`fedfm.runtime.asynchronous`, on a simulated clock:
:meth:`~FedBuffServer.pop` takes the earliest finish) and ``fedfm serve``'s coordinator (on
the wall clock:
:meth:`~FedBuffServer.arrive` takes a client in the order the network delivers it, and a
flight's ``finish`` is the time the server gives up on it).

Staleness: a client that started from global version ``v0`` and whose update is applied by
the server step that turns version ``v`` into ``v + 1`` is ``τ = v - v0`` steps stale (0: it
trained on the very params it is applied to, as in a synchronous round). Its delta is
multiplied by ``s(τ)`` (:func:`staleness_weight`) before the update chain's reduction.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

SCHEDULES = ("constant", "polynomial", "hinge")

T = TypeVar("T")


def staleness_weight(tau: int, schedule: str, a: float = 0.5, b: float = 4.0) -> float:
    """The weight ``s(τ)`` of an update ``tau`` server steps stale.

    - ``constant``: ``s = 1``;
    - ``polynomial``: ``s = (1 + τ)^(-a)`` (FedBuff's choice: ``a = 0.5``);
    - ``hinge``: ``s = 1`` if ``τ <= b``, else ``1 / (a (τ - b) + 1)`` (FedAsync's).

    Every schedule gives exactly 1.0 at ``τ = 0``.

    Example:
        >>> staleness_weight(3, "polynomial", a=0.5), staleness_weight(6, "hinge", a=1, b=4)
        (0.5, 0.3333333333333333)
    """
    if tau < 0:
        raise ValueError(f"staleness {tau} < 0: an update cannot start from a future version")
    if schedule == "constant":
        return 1.0
    if schedule == "polynomial":
        return float((1.0 + tau) ** -a)
    if schedule == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ValueError(f"asynchronous.staleness = {schedule!r} is not one of {SCHEDULES}")


def draw_clients(idle: Sequence[int], n: int, *, seed: int, version: int) -> list[int]:
    """``n`` of the ``idle`` clients, drawn without replacement (sorted): a pure function of
    (seed, version, idle set). With every client of ``range(N)`` idle it is the synchronous
    cohort draw of round ``version + 1`` (:meth:`fedfm.strategies.base.Strategy.select`).

    Example:
        >>> draw_clients([0, 1, 2, 3], 4, seed=0, version=5)
        [0, 1, 2, 3]
    """
    rng = np.random.default_rng([seed, version + 1])
    pool = np.asarray(sorted(idle), dtype=np.int64)
    n = min(n, len(pool))
    return sorted(int(c) for c in rng.choice(pool, size=n, replace=False))


@dataclass(frozen=True, order=True)
class InFlight(Generic[T]):
    """A dispatched client: when it will arrive, in which order it was sent, from which
    global version it started, and what it will bring (opaque here).

    Attributes:
        finish: its arrival time on the server's clock (dispatch time + its duration).
        ticket: the dispatch counter's value when it was sent (ties of ``finish`` go to the
            lower ticket; a flush applies its updates in ticket order).
        client: the client's id.
        version: the global version it started from.
        payload: what arrives (the simulator's decoded update, or the reason it has none).
    """

    finish: float
    ticket: int
    client: int
    version: int
    payload: T = field(compare=False)


@dataclass(frozen=True)
class Arrival(Generic[T]):
    """A client's result as the server takes it in: when, and how stale."""

    flight: InFlight[T]
    time: float
    staleness: int


@dataclass
class FedBuffServer(Generic[T]):
    """The server's side of FedBuff: a clock, a version, clients in flight and a buffer.

    :meth:`dispatch` sends a client off from the current version; :meth:`pop` takes the
    earliest arrival (advancing the clock to it); :meth:`hold` keeps a valid one in the
    buffer; once :attr:`full`, :meth:`flush` hands the buffer over in dispatch order and
    advances the version (the caller applies the updates: one server step).

    Example:
        >>> server = FedBuffServer[str](size=1)
        >>> _ = server.dispatch(client=0, duration=4.0, payload="slow")
        >>> _ = server.dispatch(client=1, duration=1.0, payload="fast")
        >>> first = server.pop(); server.hold(first)
        >>> [a.flight.payload for a in server.flush()], server.version, server.clock
        (['fast'], 1, 1.0)
        >>> second = server.pop()
        >>> second.flight.payload, second.staleness, second.time
        ('slow', 1, 4.0)
    """

    size: int  # K: updates per server step
    clock: float = 0.0
    version: int = 0
    tickets: int = 0  # clients dispatched so far (the next one's ticket)
    in_flight: list[InFlight[T]] = field(default_factory=list)  # a heap on (finish, ticket)
    buffer: list[Arrival[T]] = field(default_factory=list)

    def dispatch(self, *, client: int, duration: float, payload: T) -> InFlight[T]:
        """Send ``client`` off now from the current version; it arrives after ``duration``."""
        if duration < 0:
            raise ValueError(f"a client's duration must be >= 0, got {duration}")
        flight = InFlight(self.clock + duration, self.tickets, client, self.version, payload)
        self.tickets += 1
        heapq.heappush(self.in_flight, flight)
        return flight

    def busy(self) -> set[int]:
        """The clients in flight."""
        return {f.client for f in self.in_flight}

    def pop(self) -> Arrival[T]:
        """The earliest arrival (ties: the earlier dispatch); the clock moves to it."""
        if not self.in_flight:
            raise IndexError("no client is in flight")
        flight = heapq.heappop(self.in_flight)
        self.clock = max(self.clock, flight.finish)
        return Arrival(flight, self.clock, self.version - flight.version)

    def arrive(self, client: int, time: float, payload: T) -> Arrival[T]:
        """``client``'s flight, arrived at ``time`` (at the latest its ``finish``) with
        ``payload``; the clock moves to ``time``.

        Example:
            >>> server = FedBuffServer[str](size=1)
            >>> _ = server.dispatch(client=7, duration=60.0, payload="given up")
            >>> arrival = server.arrive(7, 2.5, "its update")
            >>> arrival.flight.payload, arrival.time, server.busy()
            ('its update', 2.5, set())
        """
        flight = next((f for f in self.in_flight if f.client == client), None)
        if flight is None:
            raise KeyError(f"client {client} is not in flight")
        self.in_flight.remove(flight)
        heapq.heapify(self.in_flight)
        self.clock = max(self.clock, time)
        arrived = InFlight(flight.finish, flight.ticket, client, flight.version, payload)
        return Arrival(arrived, self.clock, self.version - flight.version)

    def hold(self, arrival: Arrival[T]) -> None:
        """Keep a valid arrival in the buffer until the next server step."""
        self.buffer.append(arrival)

    @property
    def full(self) -> bool:
        return len(self.buffer) >= self.size

    def flush(self) -> list[Arrival[T]]:
        """The buffered arrivals in dispatch order, the buffer emptied, the version advanced."""
        held = sorted(self.buffer, key=lambda a: a.flight.ticket)
        self.buffer = []
        self.version += 1
        return held
