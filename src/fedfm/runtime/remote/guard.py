"""Bounds on what a remote peer can hold of the server: a thread, memory, time.

- :class:`Watchdog` cancels a stream that stalls (no chunk for ``remote.stream_timeout``
  seconds, in either direction), which frees its handler thread: a slow-loris peer holds a
  thread for seconds, not forever, and shutdown never waits on a stalled stream.
- :class:`Budget` holds the bytes of updates in flight: one stream per client at a time, and
  at most ``remote.max_inflight_mb`` in all, reserved from the header's announced size
  before the body is read.

Example:
    >>> budget = Budget(total=100)
    >>> budget.reserve("a", 60), budget.reserve("a", 1)
    (None, "an update from 'a' is already arriving")
    >>> budget.reserve("b", 60)
    'the server is busy: 60 of 100 bytes in flight'
    >>> budget.release("a"); budget.reserve("b", 60) is None
    True
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class Watchdog:
    """Cancels the gRPC calls it watches once they stall for ``idle`` seconds."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.cancelled = 0  # calls cut so far
        self._calls: dict[int, list[Any]] = {}  # id -> [context, last activity]
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedfm-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(self, context: Any) -> Iterator[Callable[[], None]]:
        """Watch the call of ``context`` (a ``grpc.ServicerContext``; None: nothing to watch)
        while the block runs; the block calls the yielded ``touch()`` on every chunk."""
        if context is None:
            yield lambda: None
            return
        key, entry = next(self._ids), [context, time.monotonic()]

        def touch() -> None:
            entry[1] = time.monotonic()

        with self._lock:
            self._calls[key] = entry
        try:
            yield touch
        finally:
            with self._lock:
                self._calls.pop(key, None)

    @property
    def watching(self) -> int:
        with self._lock:
            return len(self._calls)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.idle / 4)):
            now = time.monotonic()
            with self._lock:
                stalled = [k for k, (_, last) in self._calls.items() if now - last > self.idle]
                contexts = [self._calls.pop(k)[0] for k in stalled]
            for context in contexts:  # the handler's next read or write then fails
                context.cancel()
                self.cancelled += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Budget:
    """Bytes of updates in flight, reserved per client (one stream each) up to ``total``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve(self, client_id: str, size: int) -> str | None:
        """Reserve ``size`` bytes for ``client_id``'s stream; the reason when refused."""
        with self._lock:
            if client_id in self._held:
                return f"an update from {client_id!r} is already arriving"
            held = sum(self._held.values())
            if held + size > self.total:
                return f"the server is busy: {held:,} of {self.total:,} bytes in flight"
            self._held[client_id] = size
            return None

    def release(self, client_id: str) -> None:
        with self._lock:
            self._held.pop(client_id, None)
