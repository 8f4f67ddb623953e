"""How many clients a second does stacking them on one backbone (``simulation.parallel_clients``)
train, against one after another?

MiniLM + LoRA (r = 8, query/value) + head on TREC-6, FedAvg, one local epoch over small,
unequal (Dirichlet) clients; once with questions up to 64 tokens, once cut at 12 (batches of
nearly one width: what stacking costs or saves without the padding it adds). Per workload,
one worker process builds the same job three times, one per arm (``parallel_clients`` = 0,
4, 8), and runs their rounds in rotation (the arms' order shifts by one each round), so that
machine noise hits every arm alike. Reported per arm:

* **clients per second**: the cohort's size over ``run_round`` wall time (no evaluation
  inside: ``eval.every`` is past the last round), and over the process's CPU time (steadier
  on a shared machine: torch runs one thread); round 1 (warm-up) left out; a speed-up is the
  median of the per-round ratios against the sequential arm in the same round;
* **token slots computed**: the token positions the backbone ran over those of the clients'
  own batches (a stack pads every batch to its widest: the price of stacking);
* the train loss of each round and the final global model's test accuracy (a sanity check:
  MiniLM's dropout of 0.1 is on, so a stack is the sequential run statistically, not
  bitwise; see ``docs/parallel-clients.md``).

Writes ``benchmarks/results/parallel_clients.json`` with the resolved configs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/parallel_clients.py   # ~3 min on 2 busy cores
    .venv/bin/python benchmarks/parallel_clients.py --only trec6 --rounds 3 --threads 2
    # larger stacks and cohorts, on a GPU (benchmarks/device/parallel_clients.sh does this)
    python3 benchmarks/parallel_clients.py --arms 0,16,64 --set device=cuda \
        --set data.num_clients=256 --set strategy.clients_per_round=64
"""

from __future__ import annotations

import sys
import time
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
ARMS = "0,4,8"  # the arms' simulation.parallel_clients (0: sequential)
# Small settings: 8 clients a round of about 40 examples each (Dirichlet sizes and labels).
OVERRIDES = [
    "data.num_clients=16",
    "data.max_train_examples=640",
    "data.max_test_examples=256",
    "strategy.clients_per_round=8",
    "client.epochs=1",
    "client.batch_size=16",
]
WORKLOADS = {
    "trec6": OVERRIDES,  # questions up to 64 tokens: batch widths differ from client to client
    # cut at 12 tokens, most batches are 12 wide: stacking's own cost, without its padding
    "trec6_max12": [*OVERRIDES, "data.max_length=12"],
}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from rich.console import Console

    from fedfm.client import fit as fit_module
    from fedfm.client import parallel as parallel_module
    from fedfm.config import load_config, to_toml
    from fedfm.data.batching import batches
    from fedfm.runtime.job import build_job
    from fedfm.runtime.simulation import RoundState, evaluate_global, run_round
    from fedfm.runtime.transports import TRANSPORTS

    set_threads(spec["threads"])
    rounds = spec["rounds"]
    base = [*spec["overrides"], f"rounds={rounds + 1}", "eval.every=1000", "eval.per_client=false"]
    arms: dict[str, dict[str, Any]] = {}
    for arm, size in spec["arms"].items():
        cfg = load_config(None, [*base, f"simulation.parallel_clients={size}"])
        job = build_job(cfg)
        opened = TRANSPORTS.get("simulation")(job, Path("."), Console(quiet=True))
        arms[arm] = {
            "cfg": cfg,
            "job": job,
            "transport": opened.__enter__(),  # nothing to close: in process
            "state": RoundState(round=0, global_params=job.initial_params),
            "seconds": [],
            "cpu_seconds": [],
            "clients": [],
            "train_loss": [],
            "own_tokens": 0,  # token slots of the clients' own (padded) batches
            "stacked_tokens": 0,  # token slots of the stacked batches the backbone ran
        }
    current: list[str] = []

    def counted(*args: Any, **kw: Any):  # noqa: ANN202
        for batch in batches(*args, **kw):
            arms[current[0]]["own_tokens"] += batch["input_ids"].numel()
            yield batch

    def stacked(parts: Any, pad_id: int) -> Any:
        out = stack_batches(parts, pad_id)
        arms[current[0]]["stacked_tokens"] += out["input_ids"].numel()
        return out

    stack_batches = parallel_module.stack_batches
    fit_module.batches = counted  # training batches only (evaluation unchanged)
    parallel_module.stack_batches = stacked
    names = list(arms)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for round_ in range(1, rounds + 1):
        shift = round_ % len(names)
        for arm in names[shift:] + names[:shift]:
            a, current[:] = arms[arm], [arm]
            sync()
            started, cpu = time.perf_counter(), time.process_time()
            record = run_round(a["job"], a["state"], transport=a["transport"])
            sync()  # a GPU's queued work belongs to the round
            a["seconds"].append(time.perf_counter() - started)
            a["cpu_seconds"].append(time.process_time() - cpu)
            a["clients"].append(len(record["cohort"]))
            a["train_loss"].append(record["train_loss"])
    return {
        arm: {
            "config": to_toml(a["cfg"]),
            "seconds": a["seconds"],
            "clients": a["clients"],
            "cpu_seconds": a["cpu_seconds"],
            "clients_per_second": [c / s for c, s in zip(a["clients"], a["seconds"], strict=True)],
            "clients_per_cpu_second": [
                c / s for c, s in zip(a["clients"], a["cpu_seconds"], strict=True)
            ],
            "computed_tokens_ratio": (a["stacked_tokens"] or a["own_tokens"]) / a["own_tokens"],
            "train_loss": a["train_loss"],
            "test_metrics": {
                k: v
                for k, v in evaluate_global(a["job"], a["state"].global_params).items()
                if k in ("accuracy", "macro_f1", "loss")
            },
            "client_sizes": [c.num_examples for c in a["job"].federation.clients],
        }
        for arm, a in arms.items()
    }


def arm_names(sizes: str) -> dict[str, int]:
    """``"0,4,8"`` -> ``{"sequential": 0, "parallel_4": 4, "parallel_8": 8}``."""
    values = [int(v) for v in sizes.split(",")]
    if 0 not in values or any(v < 0 or v == 1 for v in values):
        raise SystemExit(f"--arms {sizes!r}: sizes 0 (sequential, required) or >= 2")
    return {"sequential" if v == 0 else f"parallel_{v}": v for v in values}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    timed = slice(1, None) if len(result["sequential"]["seconds"]) > 1 else slice(None)
    seq = result["sequential"]["clients_per_second"][timed]
    out: dict[str, Any] = {}
    seq_cpu = result["sequential"]["clients_per_cpu_second"][timed]
    for arm in result:
        rate = result[arm]["clients_per_second"][timed]
        cpu_rate = result[arm]["clients_per_cpu_second"][timed]
        ratios = [r / s for r, s in zip(rate, seq, strict=True)]
        cpu_ratios = [r / s for r, s in zip(cpu_rate, seq_cpu, strict=True)]
        out[arm] = {
            "median_clients_per_second": median(rate),
            "speedup_per_round": ratios,
            "median_speedup": median(ratios),
            "median_clients_per_cpu_second": median(cpu_rate),
            "cpu_speedup_per_round": cpu_ratios,
            "median_cpu_speedup": median(cpu_ratios),
            "computed_tokens_ratio": result[arm]["computed_tokens_ratio"],
            "final_test_accuracy": result[arm]["test_metrics"]["accuracy"],
            "last_train_loss": result[arm]["train_loss"][-1],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = workload_parser(__doc__.split("\n\n")[0], WORKLOADS, rounds=4)
    parser.add_argument("--arms", default=ARMS, help=f"parallel_clients per arm (default {ARMS})")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, every arm"
    )
    args = parser.parse_args(argv)
    if serve_worker(args, worker):
        return 0
    arms = arm_names(args.arms)
    report: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "rounds": args.rounds,
        "timing": "run_round wall and CPU time, arms rotated per round, round 1 excluded",
        "workloads": {},
    }
    for name in [args.only] if args.only else list(WORKLOADS):
        started = time.perf_counter()
        spec = {"overrides": [*WORKLOADS[name], *args.set], "rounds": args.rounds, "arms": arms}
        result = run_worker(SCRIPT, spec, threads=args.threads)
        report["workloads"][name] = {
            "spec": spec,
            "arms": result,
            "summary": summarise(result),
            "wall_seconds": time.perf_counter() - started,
        }
    check_fingerprint(report)
    write_json(args.out / "parallel_clients.json", report)
    rows = [
        [
            name,
            arm,
            arms[arm],
            f"{s['median_clients_per_second']:.2f}",
            f"{s['median_speedup']:.2f}",
            f"{s['median_clients_per_cpu_second']:.2f}",
            f"{s['median_cpu_speedup']:.2f}",
            f"{s['computed_tokens_ratio']:.2f}",
            f"{s['last_train_loss']:.3f}",
            f"{s['final_test_accuracy']:.3f}",
        ]
        for name, w in report["workloads"].items()
        for arm, s in w["summary"].items()
    ]
    headers = [
        "workload",
        "arm",
        "parallel_clients",
        "clients/s (wall)",
        "speed-up (wall)",
        "clients/CPU-s",
        "speed-up (CPU)",
        "token slots computed",
        "last train loss",
        "test acc",
    ]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
