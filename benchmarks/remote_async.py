"""FedBuff against synchronous FedAvg, with and without a deadline, with real remote clients.

The question (issue 22, "the same logic drives remote clients"): when half of a `fedfm serve`
job's clients are slow, how does test accuracy grow against the server's wall clock for

- ``sync``: FedAvg, each round waits for all six clients;
- ``sync-deadline``: FedAvg whose rounds close ``remote.deadline`` = 0.4 s after they open
  once half the cohort has answered (``remote.quorum = 0.5``), so the slow clients' updates
  come too late to count;
- ``fedbuff``: FedBuff, all six clients in flight, a server step every 3 arrivals,
  polynomial staleness weights?

Every arm is `fedfm serve` (TLS on loopback, run in this process) with six `fedfm join`
processes: MLP on digits, Dirichlet(0.5) over 6 clients, SGD, one epoch a task. A slow
machine is emulated: clients c3, c4 and c5 sleep ``--delay`` seconds (default 1.0) before
each task's training; a fast client's task takes tens of milliseconds. Time is the sum of the
rounds' (steps') ``seconds`` from the end of the first, so the clients' start-up (which the
first round waits for) is left out of every arm alike.

For seeds 0, 1, 2 the script writes each evaluated round's time and test accuracy, the
accuracy at an equal time budget (the shortest arm's last time, per seed), the time to first
reach 90% of the best final accuracy, the staleness and exclusions, and each arm's resolved
config to ``benchmarks/results/remote_async.json``, and seed 0's curves to
``docs/remote-async-curves.png``.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/remote_async.py     # about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import REPO, RESULTS, machine_info, offline_env, set_threads

CLIENTS = [f"c{i}" for i in range(6)]
SLOW = {"c3", "c4", "c5"}
BASE = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=6",
    "client.epochs=1",
    "client.batch_size=16",
    "client.optimizer=sgd",
    "client.lr=0.05",
    "strategy.clients_per_round=6",
    "checkpoint.every=0",
    f"remote.clients={json.dumps(CLIENTS)}",
]
ARMS = {
    "sync": ["rounds=15"],
    "sync-deadline": ["rounds=15", "remote.deadline=0.4", "remote.quorum=0.5"],
    "fedbuff": [
        "rounds=40",
        "asynchronous.enabled=true",
        "asynchronous.concurrency=6",
        "asynchronous.buffer=3",
        "asynchronous.staleness=polynomial",
    ],
}
SEEDS = (0, 1, 2)
FIGURE = REPO / "docs" / "remote-async-curves.png"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def slow_client(delay: float, join_args: list[str]) -> int:
    """``fedfm join`` whose every task starts ``delay`` seconds late (a slower machine)."""
    import fedfm.runtime.remote.client as remote_client
    from fedfm.cli import main

    fit = remote_client.fit

    def late(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return fit(*args, **kwargs)

    remote_client.fit = late
    return main(["join", *join_args])


def run_arm(arm: str, seed: int, tmp: Path, delay: float) -> Path:
    from rich.console import Console

    from fedfm.config import load_config
    from fedfm.runtime.remote.server import remote_backend
    from fedfm.runtime.run import execute, prepare_run_dir

    port = _port()
    overrides = [
        *BASE,
        *ARMS[arm],
        f"seed={seed}",
        f"name={arm}-s{seed}",
        f"output_dir={tmp / 'runs'}",
        f"remote.address=localhost:{port}",
        f"remote.tls_dir={tmp / 'tls'}",
    ]
    cfg = load_config(None, overrides)
    run_dir = prepare_run_dir(cfg, overwrite=True)
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            execute(cfg, run_dir=run_dir, console=Console(quiet=True), backend=remote_backend)
        except BaseException as err:  # re-raised below
            failed.append(err)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    procs = []
    for cid in CLIENTS:
        join = [
            "--server",
            f"localhost:{port}",
            "--credentials",
            str(tmp / f"{cid}.json"),
            "--ca",
            str(tmp / "tls" / "ca.pem"),
        ]
        cmd = [sys.executable, __file__, "--client", str(delay if cid in SLOW else 0.0), *join]
        procs.append(
            subprocess.Popen(
                cmd, env=offline_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    server.join(timeout=600)
    if failed or server.is_alive():
        raise RuntimeError(f"{arm} seed {seed} failed: {failed}")
    # a slow client still on a task of a closed round when the run ended finds the server
    # gone and would retry for minutes: its run is over, so it is stopped
    stopped = 0
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            stopped += 1
    (run_dir / "clients_stopped").write_text(str(stopped))
    return run_dir


def read_arm(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    clock, curve = 0.0, []
    for r in records[1:]:  # from the end of the first round: the clients' start-up left out
        clock += r["seconds"]
        curve.append([r["round"], round(clock, 4), r["test_accuracy"]])
    stale = [t for r in records for t in r.get("staleness", [])]
    slow_ids = {CLIENTS.index(c) for c in SLOW}
    applied_slow = sum(
        1 for r in records for p in r.get("participants", []) if CLIENTS.index(p) in slow_ids
    )
    return {
        "config": (run_dir / "config.toml").read_text(),
        "first_round_seconds": records[0]["seconds"],
        "first_round_accuracy": records[0]["test_accuracy"],
        "curve": curve,
        "final_accuracy": records[-1]["test_accuracy"],
        "updates_from_slow_clients": applied_slow,
        "excluded": sum(len(r["excluded"]) for r in records),
        "staleness_mean": sum(stale) / len(stale) if stale else None,
        "staleness_max": max(stale, default=None),
        "clients_stopped_after_the_run": int((run_dir / "clients_stopped").read_text()),
    }


def accuracy_at(curve: list[list[float]], budget: float) -> float | None:
    seen = [acc for _, t, acc in curve if t <= budget]
    return seen[-1] if seen else None


def time_to(curve: list[list[float]], target: float) -> float | None:
    return next((t for _, t, acc in curve if acc >= target), None)


def plot(arms: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, data in arms.items():
        ax.plot([t for _, t, _ in data["curve"]], [a for _, _, a in data["curve"]], label=arm)
    ax.set_xlabel("server wall-clock seconds after the first round")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"fedfm serve, 6 clients, 3 of them slow (seed {SEEDS[0]})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "remote_async.json")
    parser.add_argument("--delay", type=float, default=1.0, help="a slow client's extra seconds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    from fedfm.runtime.remote.security import add_client, make_tls

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="fedfm-remote-async-"))
    result: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/remote_async.py",
        "delay_seconds": args.delay,
        "slow_clients": sorted(SLOW),
        "seeds": {},
    }
    try:
        make_tls(tmp / "tls")
        for cid in CLIENTS:
            add_client(tmp / "tls", cid, tmp / f"{cid}.json")
        for seed in SEEDS:
            arms = {arm: read_arm(run_arm(arm, seed, tmp, args.delay)) for arm in ARMS}
            budget = min(a["curve"][-1][1] for a in arms.values())
            target = 0.9 * max(a["final_accuracy"] for a in arms.values())
            for data in arms.values():
                data["accuracy_at_budget"] = accuracy_at(data["curve"], budget)
                data["time_to_target"] = time_to(data["curve"], target)
            result["seeds"][str(seed)] = {"budget": budget, "target": target, "arms": arms}
            if seed == SEEDS[0]:
                plot(arms, FIGURE)
            summary = "; ".join(
                f"{arm} {a['accuracy_at_budget']} (to target {a['time_to_target']})"
                for arm, a in arms.items()
            )
            print(f"seed {seed}: budget {budget:.2f} s, target {target:.3f}: {summary}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"→ {args.out}, {FIGURE} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--client":
        sys.exit(slow_client(float(sys.argv[2]), sys.argv[3:]))
    main()
