"""Transports: how a round's clients are reached, one module each, chosen by ``backend``.

Each registered entry opens a transport for a run, ``(job, run_dir, console) -> context
manager`` yielding a :class:`~fedfm.runtime.simulation.Transport` (the cohort-fitting
protocol: "train these clients for this round; yield each outcome or the reason it has
none"); the round driver (:func:`~fedfm.runtime.simulation.run_round`) is the same for all.
A transport's module is imported only when a run asks for it (Ray and gRPC are heavy).

Add a transport: one module with an opener, plus one line below.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rich.console import Console

from fedfm.registry import Registry

Opener = Callable[[Any, Path, Console], AbstractContextManager[Any]]

TRANSPORTS: Registry[Opener] = Registry("transport")


def _lazy(target: str) -> Opener:
    """An opener that imports ``module:function`` when a run first opens it."""
    module, name = target.split(":")

    def open_(job: Any, run_dir: Path, console: Console) -> AbstractContextManager[Any]:
        return getattr(importlib.import_module(module), name)(job, run_dir, console)

    return open_


@contextlib.contextmanager
def open_in_process(job: Any, run_dir: Path, console: Console) -> Iterator[Any]:
    """The in-process simulator: nothing to start or stop (``simulation.parallel_clients``
    > 1: clients in stacks, :mod:`fedfm.runtime.transports.parallel`)."""
    size = job.cfg.simulation.parallel_clients
    if size > 1:
        from fedfm.runtime.transports.parallel import Parallel

        yield Parallel(job, size)
        return
    from fedfm.runtime.transports.in_process import InProcess

    yield InProcess()


TRANSPORTS.register("simulation")(open_in_process)
TRANSPORTS.register("ray")(_lazy("fedfm.runtime.transports.ray:open_ray"))
TRANSPORTS.register("remote")(_lazy("fedfm.runtime.remote.server:remote_backend"))
