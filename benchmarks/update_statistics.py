"""What does the round record's drift statistics (update norms, mean pairwise cosine) cost?

``fedfm.strategies.aggregate.update_statistics`` runs once per round over the cohort's
updates. Up to ``EXACT_STATISTICS`` elements it takes the exact float64 Gram; above, one
streamed float32 pass (norms, then the sum of unit updates). This times both paths on the
same cohorts, alternated (ABAB), one torch thread, and records how far the streamed figures
are from the exact ones:

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, check_fingerprint, machine_info, median, set_threads, write_json

from fedfm.strategies import aggregate

COHORTS: dict[str, dict[str, tuple[int, ...]]] = {
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


def exact(deltas: list[dict[str, torch.Tensor]]) -> tuple[list[float], float]:
    g = aggregate.gram(deltas).numpy()
    return np.sqrt(g.diagonal()).tolist(), aggregate._mean_cosine(g)


def streamed(deltas: list[dict[str, torch.Tensor]]) -> tuple[list[float], float | None]:
    limit = aggregate.EXACT_STATISTICS
    aggregate.EXACT_STATISTICS = 0  # force the streamed pass whatever the size
    try:
        return aggregate.update_statistics(deltas)
    finally:
        aggregate.EXACT_STATISTICS = limit


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
        times: dict[str, list[float]] = {"exact": [], "streamed": []}
        for _ in range(REPEATS):
            for arm, fn in (("exact", exact), ("streamed", streamed)):
                started = time.perf_counter()
                fn(deltas)
                times[arm].append(time.perf_counter() - started)
        (norms, cosine), (s_norms, s_cosine) = exact(deltas), streamed(deltas)
        assert s_cosine is not None
        report["cohorts"][name] = {
            "values": sum(v.numel() for v in deltas[0].values()),
            "seconds": times,
            "median_ms_exact": 1e3 * median(times["exact"]),
            "median_ms_streamed": 1e3 * median(times["streamed"]),
            "speedup": median(times["exact"]) / median(times["streamed"]),
            "norm_max_relative_error": max(
                abs(a - b) / a for a, b in zip(norms, s_norms, strict=True)
            ),
            "cosine_abs_error": abs(cosine - s_cosine),
            "path_taken": "exact"
            if UPDATES * sum(v.numel() for v in deltas[0].values()) <= aggregate.EXACT_STATISTICS
            else "streamed",
        }
        print(
            name, json.dumps({k: v for k, v in report["cohorts"][name].items() if k != "seconds"})
        )
    check_fingerprint(report)
    write_json(args.out / "update_statistics.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
