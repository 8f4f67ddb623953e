"""FedBuff against synchronous FedAvg, with and without a deadline, on simulated time.

The question (issue 22, asynchronous rounds): on a skewed speed profile (half the clients
4x slower, ``system.speeds = [1.0, 0.25]``), how does test accuracy grow against the
simulated clock for

- ``sync``: FedAvg, each round waits for its slowest member (``configs/digits-mlp-sync.toml``);
- ``sync-deadline``: FedAvg with a deadline that drops the slow clients
  (``configs/digits-mlp-sync-deadline.toml``);
- ``fedbuff``: FedBuff, 10 clients in flight, a server step every 5 arrivals, polynomial
  staleness weights (``configs/digits-mlp-fedbuff.toml``)?

Each arm runs its example config unchanged but for ``seed`` and ``output_dir``, for seeds
0, 1, 2 (MLP on digits: seconds per run). The script writes every evaluated round's
``sim_clock`` and ``test_accuracy``, the accuracy at an equal simulated-time budget (the
shortest arm's final clock, per seed), the simulated time to first reach an accuracy, and
each run's resolved config to ``benchmarks/results/async_fedbuff.json``; and draws seed 0's
``comparison_sim_clock.png`` as ``docs/async-curves.png``.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/async_fedbuff.py      # about 1 minute
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, RESULTS, machine_info, set_threads

ARMS = {
    "sync": "configs/digits-mlp-sync.toml",
    "sync-deadline": "configs/digits-mlp-sync-deadline.toml",
    "fedbuff": "configs/digits-mlp-fedbuff.toml",
}
SEEDS = (0, 1, 2)
TARGETS = (0.5, 0.7)  # accuracies whose first simulated time is reported
FIGURE = REPO / "docs" / "async-curves.png"


def run_arm(config: str, seed: int, runs: Path) -> Path:
    from rich.console import Console

    from fedfm.config import load_config
    from fedfm.runtime.run import execute, prepare_run_dir

    name = f"{Path(config).stem}-s{seed}"
    cfg = load_config(REPO / config, [f"seed={seed}", f"name={name}", f"output_dir={runs}"])
    execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=True), console=Console(quiet=True))
    return runs / name


def read_arm(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "test_accuracy" in r]
    stale = [t for r in records for t in r.get("staleness", [])]
    return {
        "config": (run_dir / "config.toml").read_text(),
        "curve": [[r["round"], r["sim_clock"], r["test_accuracy"]] for r in evaluated],
        "excluded_updates": sum(len(r["excluded"]) for r in records),
        "staleness_mean": sum(stale) / len(stale) if stale else None,
        "staleness_max": max(stale, default=None),
    }


def accuracy_at(curve: list[list[float]], budget: float) -> float | None:
    """The accuracy of the last evaluation at or before simulated time ``budget``."""
    seen = [acc for _, clock, acc in curve if clock <= budget]
    return seen[-1] if seen else None


def time_to(curve: list[list[float]], target: float) -> float | None:
    """The simulated time of the first evaluation reaching ``target`` (None: never)."""
    return next((clock for _, clock, acc in curve if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "async_fedbuff.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    from fedfm.report.compare import CLOCK_PLOT, compare_runs

    started = time.perf_counter()
    runs = Path(tempfile.mkdtemp(prefix="fedfm-async-"))
    result: dict[str, Any] = {"machine": machine_info(args.threads), "seeds": {}}
    try:
        for seed in SEEDS:
            folders = {arm: run_arm(config, seed, runs) for arm, config in ARMS.items()}
            arms = {arm: read_arm(folder) for arm, folder in folders.items()}
            budget = min(a["curve"][-1][1] for a in arms.values())
            for arm in arms.values():
                arm["accuracy_at_budget"] = accuracy_at(arm["curve"], budget)
                arm["time_to"] = {str(t): time_to(arm["curve"], t) for t in TARGETS}
            result["seeds"][str(seed)] = {"budget": budget, "arms": arms}
            if seed == SEEDS[0]:
                compare_runs(list(folders.values()), runs / "report")
                shutil.copyfile(runs / "report" / CLOCK_PLOT, FIGURE)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for seed, data in result["seeds"].items():
        cells = [
            f"{arm} {a['accuracy_at_budget']:.3f} (t0.7 {a['time_to']['0.7']})"
            for arm, a in data["arms"].items()
        ]
        print(f"seed {seed}, budget {data['budget']:.0f}: " + "; ".join(cells))
    print(f"→ {args.out}, {FIGURE}")


if __name__ == "__main__":
    main()
