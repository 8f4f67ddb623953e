"""What does the round record's drift statistics (update norms, mean pairwise cosine) cost?

``fedfm.strategies.aggregate.update_statistics`` runs once per round over the cohort's
updates: their norms, then the sum of the unit updates. Up to ``EXACT_STATISTICS`` elements
it takes the updates as one float64 block; above, one streamed float32 pass. This times both
paths and a float64 Gram matrix (how the statistics were taken before: ``k`` passes over the
updates, not two) on the same cohorts, alternated, one torch thread, and records how far
each path's figures are from the Gram's:

* the MLP of ``benchmarks/overhead.py`` (4,810 values), 10 updates;
* the 5M-parameter MLP of ``benchmarks/peers`` (4.3M trainable values), 10 updates;
* MiniLM's LoRA (r = 8, query/value) and head (76k values), 10 updates.

Writes ``benchmarks/results/update_statistics.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/update_statistics.py   # about 30 s
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, check_fingerprint, machine_info, median, set_threads, write_json

from fedfm.strategies import aggregate

COHORTS: dict[str, dict[str, tuple[int, ...]]] = {
    "mlp-digits": {  # overhead.py's MLP: 4,810 values, under EXACT_STATISTICS (the block)
        "hidden.weight": (64, 64),
        "hidden.bias": (64,),
        "out.weight": (10, 64),
        "out.bias": (10,),
    },
    "mlp-5m": {
        "hidden.weight": (2048, 64),
        "hidden.bias": (2048,),
        "hidden2.weight": (2048, 2048),
        "hidden2.bias": (2048,),
        "out.weight": (10, 2048),
        "out.bias": (10,),
    },
    "minilm-lora": {
        **{f"layer.{i}.{m}.lora_A": (8, 384) for i in range(6) for m in ("query", "value")},
        **{f"layer.{i}.{m}.lora_B": (384, 8) for i in range(6) for m in ("query", "value")},
        "classifier.weight": (6, 384),
        "classifier.bias": (6,),
    },
}
UPDATES = 10
REPEATS = 7
CALLS_VALUES = 10**8  # values a timing covers (so calls on 4,810 values are timed in 2,000s)


def gram(deltas: list[dict[str, torch.Tensor]]) -> tuple[list[float], float]:
    g = aggregate.gram(deltas).numpy()
    return np.sqrt(g.diagonal()).tolist(), aggregate._mean_cosine(g)


def forced(limit: int) -> Callable[[list[dict[str, torch.Tensor]]], tuple[list[float], Any]]:
    """``update_statistics`` with ``EXACT_STATISTICS`` set to ``limit`` (0: always streamed;
    a huge one: always the float64 block), whatever the cohort's size."""

    def statistics(deltas: list[dict[str, torch.Tensor]]) -> tuple[list[float], Any]:
        default = aggregate.EXACT_STATISTICS
        aggregate.EXACT_STATISTICS = limit
        try:
            return aggregate.update_statistics(deltas)
        finally:
            aggregate.EXACT_STATISTICS = default

    return statistics


ARMS = {"gram": gram, "block": forced(2**62), "streamed": forced(0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    set_threads(1)
    report: dict[str, Any] = {"machine": machine_info(1), "updates": UPDATES, "cohorts": {}}
    for name, shapes in COHORTS.items():
        g = torch.Generator().manual_seed(0)
        deltas = [
            {k: 1e-3 * torch.randn(s, generator=g) + 1e-4 * (i % 2) for k, s in shapes.items()}
            for i in range(UPDATES)
        ]
        values = sum(v.numel() for v in deltas[0].values())
        calls = max(1, CALLS_VALUES // (UPDATES * values))  # small cohorts: time many calls
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for rep in range(REPEATS):
            for arm, fn in ARMS.items() if rep % 2 == 0 else reversed(ARMS.items()):
                started = time.perf_counter()
                for _ in range(calls):
                    fn(deltas)
                times[arm].append((time.perf_counter() - started) / calls)
        norms, cosine = gram(deltas)
        entry: dict[str, Any] = {"values": values, "calls_per_timing": calls, "seconds": times}
        for arm in ("block", "streamed"):
            a_norms, a_cosine = ARMS[arm](deltas)
            entry[f"median_ms_{arm}"] = 1e3 * median(times[arm])
            entry[f"{arm}_speedup_over_gram"] = median(times["gram"]) / median(times[arm])
            entry[f"{arm}_norm_max_relative_error"] = max(
                abs(a - b) / a for a, b in zip(norms, a_norms, strict=True)
            )
            entry[f"{arm}_cosine_abs_error"] = abs(cosine - a_cosine)
        entry["median_ms_gram"] = 1e3 * median(times["gram"])
        entry["path_taken"] = (
            "block" if UPDATES * values <= aggregate.EXACT_STATISTICS else "streamed"
        )
        report["cohorts"][name] = entry
        print(
            name, json.dumps({k: v for k, v in report["cohorts"][name].items() if k != "seconds"})
        )
    check_fingerprint(report)
    write_json(args.out / "update_statistics.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
