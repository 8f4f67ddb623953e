"""What does one round of instruction tuning SmolLM2-135M-Instruct cost a client?

One client of the built-in ``instruct`` dataset trains ``--steps`` local steps per round at
batch 8 with ``data.max_length = 256`` (LoRA on the default targets), for ``--rounds``
rounds, in a fresh process per variant: float32, bfloat16, and each with
``client.gradient_checkpointing``. Reported: seconds per round (the median of the rounds
after the first, which warms up), the rise of the process's peak RSS while the rounds run
(``fedfm.analysis.memory.peak_rss_during``) and the mean tokens per training row (the
benchmark's prompts are short: rows are padded per batch, not to 256). Writes
``benchmarks/results/instruct_cost.json`` with the resolved configs.

    .venv/bin/python benchmarks/instruct_cost.py     # about 10 minutes on 2 cores (CPU)
    .venv/bin/python benchmarks/instruct_cost.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import machine_info, markdown_table, median, run_worker, set_threads, write_json

RESULTS = Path(__file__).parent / "results"
BASE = [
    "data.dataset=instruct",
    "model.name=smollm2-135m",
    "data.partition=iid",
    "data.num_clients=4",
    "data.max_length=256",
    "client.batch_size=8",
    "client.lr=2e-4",
    "strategy.clients_per_round=1",
    "eval.every=1000",
]
VARIANTS = {
    "float32": ["model.dtype=float32"],
    "float32 + checkpointing": ["model.dtype=float32", "client.gradient_checkpointing=true"],
    "bfloat16": ["model.dtype=bfloat16"],
    "bfloat16 + checkpointing": ["model.dtype=bfloat16", "client.gradient_checkpointing=true"],
}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from fedfm.analysis.memory import peak_rss_during
    from fedfm.client.state import ClientState
    from fedfm.config import load_config, to_toml
    from fedfm.runtime.job import build_job
    from fedfm.runtime.transports.in_process import fit_client

    cfg = load_config(None, spec["overrides"])
    job = build_job(cfg)
    client = job.federation[0]
    lengths = job.train.lengths()[client.train]

    def rounds() -> list[float]:
        seconds = []
        for round_ in range(1, spec["rounds"] + 1):
            started = time.perf_counter()
            fit_client(job, client, job.initial_params, {}, ClientState(), round_)
            seconds.append(time.perf_counter() - started)
        return seconds

    seconds, peak = peak_rss_during(rounds)
    return {
        "config": to_toml(cfg),
        "seconds": seconds,
        "median_seconds": median(seconds[1:] or seconds),
        "peak_rise_mb": peak / 1e6,
        "mean_tokens": float(np.mean(lengths)),
        "max_tokens": int(np.max(lengths)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="local steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        set_threads(spec["threads"])
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return
    common = [*BASE, f"client.steps={args.steps}", f"device={args.device}"]
    report: dict[str, Any] = {"machine": machine_info(args.threads), "variants": {}}
    for name, extra in VARIANTS.items():
        spec = {"overrides": [*common, *extra], "rounds": args.rounds}
        report["variants"][name] = {
            "overrides": spec["overrides"],
            **run_worker(Path(__file__), spec, threads=args.threads),
        }
        print(name, f"{report['variants'][name]['median_seconds']:.1f} s/round", file=sys.stderr)
    write_json(args.out / "instruct_cost.json", report)
    rows = [
        [
            name,
            f"{r['median_seconds']:.1f} s",
            f"{r['median_seconds'] / args.steps:.2f} s",
            f"{r['peak_rise_mb']:.0f} MB",
            f"{r['mean_tokens']:.0f} / {r['max_tokens']}",
        ]
        for name, r in report["variants"].items()
    ]
    headers = ["variant", "s / round", "s / step", "peak RSS rise", "tokens per row (mean / max)"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
