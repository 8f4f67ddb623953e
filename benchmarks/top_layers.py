"""What does stopping backward at a top-layers client's lowest trained layer save?

A client with ``system.layers = [k]`` trains only its top ``k`` layers. Its frozen tensors
(the LoRA factors below) now stop requiring gradients while it trains
(``fedfm.client.trainer._left_alone``), so backward stops at its lowest trained layer.
Before, they required gradients, backward ran down to layer 0 and their gradients were
thrown away. The ``before`` arm reproduces that exactly: the frozen tensors keep requiring
gradients and a post-accumulate hook drops each gradient as it lands.

MiniLM + LoRA (query/value, r = 8) on TREC-6, 3 clients training every round, no prefix
cache. One worker process per workload builds the job once per arm and alternates the arms
per round (ABBA); reported: ``run_round`` seconds, medians over rounds 2.., and their ratio.
Both arms train the same params (checked: the largest difference after the last round).

Writes ``benchmarks/results/top_layers.json`` with the resolved configs.

    .venv/bin/python benchmarks/top_layers.py            # about 3 minutes on a busy core
    .venv/bin/python benchmarks/top_layers.py --only top1 --rounds 2
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    run_worker,
    serve_worker,
    set_threads,
    workload_parser,
    write_json,
)

SCRIPT = Path(__file__).resolve()
ARMS = ("before", "after")
BASE = [
    "data.num_clients=3",
    "data.max_train_examples=300",
    "data.max_test_examples=64",
    "strategy.clients_per_round=3",
    "client.epochs=1",
    "client.lr=0.001",
    "checkpoint.every=0",
]
WORKLOADS: dict[str, list[str]] = {
    "top1": ["system.layers=[1]"],
    "top2": ["system.layers=[2]"],
    "all6": [],  # no frozen tensors: both arms run the same code (a noise floor)
}


@contextlib.contextmanager
def _dropped_after_backward(live: dict[str, Any], frozen: frozenset[str]) -> Iterator[None]:
    """The old behaviour: frozen tensors get gradients, which are thrown away."""
    handles = [
        live[name].register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        for name in frozen
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fedfm.client import trainer
    from fedfm.config import load_config, to_toml
    from fedfm.runtime.job import build_job
    from fedfm.runtime.simulation import RoundState, run_round

    set_threads(spec["threads"])
    cfg = load_config(None, [*BASE, *spec["overrides"], "eval.every=1000"])
    after = trainer._left_alone
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        job = build_job(cfg)
        arms[arm] = {"job": job, "state": RoundState(0, job.initial_params), "seconds": []}
    for round_ in range(1, spec["rounds"] + 1):
        for arm in ARMS if round_ % 2 else ARMS[::-1]:
            a = arms[arm]
            trainer._left_alone = after if arm == "after" else _dropped_after_backward
            started = time.perf_counter()
            run_round(a["job"], a["state"])
            a["seconds"].append(time.perf_counter() - started)
    trainer._left_alone = after
    before, now = (arms[arm]["state"].global_params for arm in ARMS)
    difference = max(float((before[k] - now[k]).abs().max()) for k in before)
    later = slice(1, None)
    ratios = [
        b / a
        for b, a in zip(
            arms["before"]["seconds"][later], arms["after"]["seconds"][later], strict=True
        )
    ]
    return {
        "config": to_toml(cfg),
        "seconds": {arm: arms[arm]["seconds"] for arm in ARMS},
        "median_seconds_before": median(arms["before"]["seconds"][later]),
        "median_seconds_after": median(arms["after"]["seconds"][later]),
        "speedup_per_round": ratios,
        "median_speedup": median(ratios),
        "max_param_difference": difference,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = workload_parser(__doc__.split("\n\n")[0], WORKLOADS, rounds=5)
    args = parser.parse_args(argv)
    if serve_worker(args, worker):
        return 0
    report: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "rounds": args.rounds,
        "base_overrides": BASE,
        "timing": "run_round wall time (no evaluation), arms alternated per round (ABBA); "
        "medians and ratios over rounds 2..",
        "workloads": {},
    }
    for name in [args.only] if args.only else list(WORKLOADS):
        spec = {"overrides": WORKLOADS[name], "rounds": args.rounds}
        report["workloads"][name] = {"spec": spec, **run_worker(SCRIPT, spec, threads=args.threads)}
        print(name, report["workloads"][name]["median_speedup"], flush=True)
    check_fingerprint(report)
    write_json(args.out / "top_layers.json", report)
    rows = [
        [
            name,
            f"{w['median_seconds_before']:.2f}",
            f"{w['median_seconds_after']:.2f}",
            f"{w['median_speedup']:.2f}",
            f"{w['max_param_difference']:.1e}",
        ]
        for name, w in report["workloads"].items()
    ]
    print(
        markdown_table(["workload", "s/round before", "s/round after", "speed-up", "max |Δ|"], rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
