"""What secure aggregation costs: seconds and bytes per round against plain aggregation.

The protocol (``fedfm.privacy.secagg``) runs on vectors the size of MiniLM-L6's LoRA
(rank 8 on query and value) plus its head, for cohorts of 10 and 50, with and without 20%
dropouts. "Plain" is the example-weighted mean of the same float32 vectors, which is what
the server does without SecAgg. Both halves of the protocol run in this one process, so the
seconds are the sum of every client's work and the server's (a real deployment spreads the
client part over the clients). Ratios are taken within one run, interleaved.

    .venv/bin/python benchmarks/secagg.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, markdown_table, write_json  # noqa: E402

from fedfm.privacy.secagg import secure_weighted_mean  # noqa: E402

LORA_PARAMS = 76_038  # MiniLM-L6 + LoRA r8 (query, value) + the TREC-6 head, trainable


def plain_mean(vectors: dict[int, np.ndarray], weights: dict[int, float]) -> np.ndarray:
    total = sum(weights[i] for i in vectors)
    return sum(vectors[i].astype(np.float64) * (weights[i] / total) for i in vectors)


def measure(cohort: int, dropout: float, dim: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(cohort)
    vectors = {i: rng.normal(0, 0.01, dim).astype(np.float32) for i in range(cohort)}
    weights = {i: float(rng.integers(50, 500)) for i in range(cohort)}
    drop = set(range(int(dropout * cohort)))
    plain_s, secure_s, ratios = [], [], []
    for r in range(repeats):  # ABBA: plain, secure, secure, plain per pair of repeats
        order = ("plain", "secure") if r % 2 == 0 else ("secure", "plain")
        times: dict[str, float] = {}
        for kind in order:
            start = time.perf_counter()
            if kind == "plain":
                plain_mean(vectors, weights)
            else:
                result = secure_weighted_mean(
                    vectors, weights, clip=1.0, threshold=0.67, drop=drop, seed=r
                )
            times[kind] = time.perf_counter() - start
        plain_s.append(times["plain"])
        secure_s.append(times["secure"])
        ratios.append(times["secure"] / times["plain"])
    survivors = cohort - len(drop)
    plain_up = 4 * dim * survivors  # float32 vectors from the same clients
    alive = [i for i in vectors if i not in drop]
    error = np.abs(result.mean - plain_mean({i: vectors[i] for i in alive}, weights)).max()
    return {
        "cohort": cohort,
        "dropout": dropout,
        "dim": dim,
        "plain_seconds": statistics.median(plain_s),
        "secure_seconds": statistics.median(secure_s),
        "seconds_ratio": statistics.median(ratios),
        "plain_bytes_up": plain_up,
        "secure_bytes_up": 4 * dim * survivors + result.bytes_up,
        "secure_bytes_down_extra": result.bytes_down,
        "bytes_up_ratio": (4 * dim * survivors + result.bytes_up) / plain_up,
        "max_abs_error": float(error),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    dim = 2_000 if args.quick else LORA_PARAMS
    repeats = 2 if args.quick else 6
    rows = [
        measure(cohort, dropout, dim, repeats)
        for cohort in ((5,) if args.quick else (10, 50))
        for dropout in (0.0, 0.2)
    ]
    report = {
        "benchmark": "secagg",
        "machine": machine_info(1),
        "settings": {"dim": dim, "repeats": repeats, "threshold": 0.67, "clip": 1.0},
        "rows": rows,
    }
    write_json(out / "secagg.json", report)
    print(
        markdown_table(
            [
                "cohort",
                "dropout",
                "plain s",
                "SecAgg s",
                "time ratio",
                "bytes up ratio",
                "max error",
            ],
            [
                [
                    r["cohort"],
                    f"{r['dropout']:.0%}",
                    f"{r['plain_seconds']:.4f}",
                    f"{r['secure_seconds']:.3f}",
                    f"{r['seconds_ratio']:.0f}x",
                    f"{r['bytes_up_ratio']:.3f}x",
                    f"{r['max_abs_error']:.1e}",
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
