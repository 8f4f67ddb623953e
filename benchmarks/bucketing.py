"""What do length-bucketed training batches (``client.bucket_by_length``) save?

For two text workloads, TREC-6 (MiniLM + LoRA, classification) and Shakespeare (SmolLM2-135M
+ LoRA, causal LM), one worker process builds the same job twice, once with plain shuffled
batches and once with length buckets, and runs their rounds alternately (plain then bucketed
in odd rounds, bucketed then plain in even ones), so that machine noise hits both arms alike.
Reported per arm:

* **padding**: the exact count of padded tokens (``attention_mask == 0``) in every training
  batch the clients took, over all rounds, and its share of all tokens in those batches;
* **seconds per round**: ``run_round`` wall time (no evaluation inside: ``eval.every`` is
  past the last timed round); the ratio is the median of the per-round ratios, round 1
  (warm-up) left out;
* the last round's train loss and the final global model's test metrics (a sanity check,
  not a quality comparison: a few rounds).

Writes ``benchmarks/results/bucketing.json`` with the resolved configs.

    .venv/bin/python benchmarks/bucketing.py            # about 6 minutes on 2 busy cores
    .venv/bin/python benchmarks/bucketing.py --only trec6 --rounds 3
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
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
ARMS = ("plain", "bucketed")
# Small settings: a few clients a round, a few hundred examples each.
WORKLOADS: dict[str, dict[str, Any]] = {
    "trec6": {
        "config": None,  # the default job: MiniLM + LoRA on TREC-6, FedAvg, batch 32
        "overrides": [
            "data.num_clients=6",
            "data.max_train_examples=1800",
            "data.max_test_examples=256",
            "strategy.clients_per_round=3",
            "client.epochs=1",
        ],
    },
    "shakespeare": {
        "config": "configs/shakespeare-smollm2.toml",  # SmolLM2-135M + LoRA, batch 8, 64 tokens
        "overrides": [
            "data.num_clients=6",
            "data.max_test_examples=64",
            "strategy.clients_per_round=2",
            "client.steps=5",
        ],
    },
}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from fedfm.client import fit as fit_module
    from fedfm.config import load_config, to_toml
    from fedfm.data.batching import batches
    from fedfm.runtime.job import build_job
    from fedfm.runtime.simulation import RoundState, evaluate_global, run_round

    set_threads(spec["threads"])
    rounds = spec["rounds"]
    config = str(REPO / spec["config"]) if spec["config"] else None
    # rounds + 1 and eval.every past them: no timed round evaluates
    base = [*spec["overrides"], f"rounds={rounds + 1}", "eval.every=1000", "eval.per_client=false"]
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        switch = f"client.bucket_by_length={str(arm == 'bucketed').lower()}"
        cfg = load_config(config, [*base, switch])
        job = build_job(cfg)
        arms[arm] = {
            "cfg": cfg,
            "job": job,
            "state": RoundState(round=0, global_params=job.initial_params),
            "seconds": [],
            "padded": 0,
            "tokens": 0,
            "batches": 0,
            "train_loss": [],
        }
    current: list[str] = []

    def counted(*args: Any, **kw: Any):  # noqa: ANN202
        """``batches``, counting the tokens of each batch a client takes."""
        tally = arms[current[0]]
        for batch in batches(*args, **kw):
            mask = batch["attention_mask"]
            tally["tokens"] += mask.numel()
            tally["padded"] += int((mask == 0).sum())
            tally["batches"] += 1
            yield batch

    fit_module.batches = counted  # the client's training batches only (evaluation unchanged)
    for round_ in range(1, rounds + 1):
        for arm in ARMS if round_ % 2 else ARMS[::-1]:
            current[:] = [arm]
            a = arms[arm]
            started = time.perf_counter()
            record = run_round(a["job"], a["state"])
            a["seconds"].append(time.perf_counter() - started)
            a["train_loss"].append(record["train_loss"])
    out: dict[str, Any] = {}
    for arm, a in arms.items():
        metrics = evaluate_global(a["job"], a["state"].global_params)
        lengths = a["job"].train.lengths()
        out[arm] = {
            "config": to_toml(a["cfg"]),
            "seconds": a["seconds"],
            "padded_tokens": a["padded"],
            "batch_tokens": a["tokens"],
            "padding_share": a["padded"] / max(a["tokens"], 1),
            "batches": a["batches"],
            "train_loss": a["train_loss"],
            "test_metrics": metrics,
            "pool_mean_tokens": float(lengths.mean()),
            "pool_max_tokens": int(lengths.max()),
        }
    return out


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    plain, bucketed = result["plain"], result["bucketed"]
    timed = slice(1, None) if len(plain["seconds"]) > 1 else slice(None)
    pairs = zip(plain["seconds"][timed], bucketed["seconds"][timed], strict=True)
    ratios = [b / p for p, b in pairs]
    return {
        "padding_share_plain": plain["padding_share"],
        "padding_share_bucketed": bucketed["padding_share"],
        "padded_tokens_saved": plain["padded_tokens"] - bucketed["padded_tokens"],
        "batch_tokens_ratio": bucketed["batch_tokens"] / plain["batch_tokens"],
        "median_seconds_plain": median(plain["seconds"][timed]),
        "median_seconds_bucketed": median(bucketed["seconds"][timed]),
        "seconds_ratio_per_round": ratios,
        "median_seconds_ratio": median(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    parser = workload_parser(__doc__.split("\n\n")[0], WORKLOADS, rounds=3)
    args = parser.parse_args(argv)
    if serve_worker(args, worker):
        return 0
    report: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "rounds": args.rounds,
        "timing": "run_round wall time, arms alternated per round (ABBA), round 1 excluded",
        "workloads": {},
    }
    names = [args.only] if args.only else list(WORKLOADS)
    for name in names:
        started = time.perf_counter()
        spec = {**WORKLOADS[name], "rounds": args.rounds}
        result = run_worker(SCRIPT, spec, threads=args.threads)
        report["workloads"][name] = {
            "spec": spec,
            **result,
            "summary": summarise(result),
            "wall_seconds": time.perf_counter() - started,
        }
        print(f"{name}: {report['workloads'][name]['summary']}", flush=True)
    check_fingerprint(report)
    write_json(args.out / "bucketing.json", report)
    rows = [
        [
            name,
            f"{100 * s['padding_share_plain']:.1f}%",
            f"{100 * s['padding_share_bucketed']:.1f}%",
            f"{w['plain']['padded_tokens']:,} → {w['bucketed']['padded_tokens']:,}",
            f"{s['median_seconds_plain']:.2f}",
            f"{s['median_seconds_bucketed']:.2f}",
            f"{s['median_seconds_ratio']:.2f}",
        ]
        for name, w in report["workloads"].items()
        for s in [w["summary"]]
    ]
    headers = [
        "workload",
        "padding (plain)",
        "padding (bucketed)",
        "padded tokens",
        "s/round plain",
        "s/round bucketed",
        "time ratio",
    ]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
