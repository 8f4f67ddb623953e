"""``fedfm serve``: the federated job of a config, with its clients in other processes.

The server runs the simulator's own round driver and the same strategy, with the
:class:`~fedfm.runtime.remote.coordinator.Coordinator` as its transport; only the client
half (:func:`fedfm.client.fit.fit`) runs elsewhere, in each remote client's process. Per
round it publishes one task per cohort member (the global params and
the strategy's payload, chunked safetensors), then waits until every member has answered, or
until ``remote.deadline`` has passed and at least ``remote.quorum`` of them have. Members that
did not answer are recorded as late or dead. Every update is validated before it counts.

Progress goes to the console and, as JSON lines, to ``events.jsonl`` in the run folder;
``metrics.jsonl``, checkpoints and the summary are those of a simulated run, so
``fedfm serve --resume`` continues after a crash from the last atomic checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.runtime.job import Job
from fedfm.runtime.remote.coordinator import Coordinator
from fedfm.runtime.remote.service import start_server
from fedfm.runtime.run_folder import run_id  # the one run id of every run (run_dir/run_id)
from fedfm.runtime.simulation import Transport

STOP_SECONDS = 10.0  # the most that stopping the server waits for calls still running


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
    profiles = ("ranks", "speeds", "layers", "steps")
    if any(getattr(cfg.system, key) for key in profiles) or cfg.system.deadline:
        raise ConfigError(
            "[system] resource profiles are simulated; remote clients bring their own "
            "machines: leave system.ranks, speeds, layers, steps and deadline unset"
        )
    if cfg.strategy.name in ("centralized", "local"):
        raise ConfigError(
            f"strategy.name = {cfg.strategy.name!r} is a reference without federation; "
            "serve a federated strategy (fedavg, fedadam, ...)"
        )


@contextlib.contextmanager
def remote_backend(job: Job, run_dir: Path, console: Console) -> Iterator[Transport]:
    """The transport of ``backend = "remote"`` (``fedfm serve``): serve while the rounds
    run, then tell every client the job is done and stop."""
    check_remote(job.cfg)
    coord = Coordinator(job, run_dir, console, run_id=run_id(run_dir))
    server, port = start_server(coord)
    coord.log("serving", address=job.cfg.remote.address, port=port, tls=not job.cfg.remote.insecure)

    try:
        yield coord
    finally:
        coord.finish()
        coord.drain()  # the clients still training at the end hear that it is done
        time.sleep(min(2.0, job.cfg.remote.deadline))  # let polling clients hear "done"
        stopped = server.stop(grace=1.0).wait(timeout=STOP_SECONDS)
        coord.watchdog.close()
        if coord.suppressed:
            coord.log("suppressed", events=coord.suppressed)
        coord.log("stopped", clean=stopped, errors=coord.errors)
