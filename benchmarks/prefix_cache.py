"""What does the frozen-prefix activation cache (``client.prefix_cache``) save?

MiniLM + LoRA on TREC-6 where every client trains only its top ``k`` layers
(``system.layers = [k]``, k = 1 and 2 of MiniLM's 6): the embeddings and layers ``0..5-k``
are frozen for every client, so with the cache they run once per example. One worker
process per workload builds the job twice, ``client.prefix_cache = false`` (plain) and
``true`` (cached), and runs their rounds alternately (plain first in odd rounds, cached
first in even ones), so that machine noise hits both arms alike. Reported per arm:

* **seconds per round**: ``run_round`` wall time, training only (``eval.every`` is past the
  last round); every client trains every round, so round 1 (where the cached arm fills its
  cache) is reported apart, and the ratio is the median of the per-round ratios of rounds
  2.. (the steady state);
* **evaluation seconds**: ``evaluate_global`` on the test set after each round (the first
  fills the test set's states);
* **peak memory of a round**: the peak RSS during the round (``VmHWM`` reset through
  ``/proc/self/clear_refs`` after ``malloc_trim``) minus the RSS at its start: what the
  round's activations and buffers add (the cache's own growth included in round 1);
* the cache's size, fill time, and the final test metrics (a sanity check: MiniLM's hidden
  dropout of 0.1 acts below the cut only in the plain arm, so the arms are different draws).

Writes ``benchmarks/results/prefix_cache.json`` with the resolved configs.

    .venv/bin/python benchmarks/prefix_cache.py            # about 6 minutes on 2 busy cores
    .venv/bin/python benchmarks/prefix_cache.py --only top1 --rounds 2
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    proc_status_mb,
    run_worker,
    serve_worker,
    set_threads,
    workload_parser,
    write_json,
)

SCRIPT = Path(__file__).resolve()
ARMS = ("plain", "cached")
BASE = [  # the default job otherwise: MiniLM + LoRA (r=8, query/value) on TREC-6, FedAvg
    "data.num_clients=3",
    "data.max_train_examples=600",
    "data.max_test_examples=256",
    "strategy.clients_per_round=3",  # every client every round: round 1 fills the cache
    "client.epochs=1",
    "checkpoint.every=0",
]
WORKLOADS: dict[str, list[str]] = {
    "top1": ["system.layers=[1]"],
    "top2": ["system.layers=[2]"],
}


def _round_memory_start() -> float:
    """Trim the heap glibc keeps, reset the peak RSS, and return the RSS now (MiB)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return proc_status_mb("VmRSS")


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from fedfm.config import load_config, to_toml
    from fedfm.runtime.job import build_job
    from fedfm.runtime.simulation import RoundState, evaluate_global, run_round

    set_threads(spec["threads"])
    rounds = spec["rounds"]
    base = [*BASE, *spec["overrides"], f"rounds={rounds + 1}", "eval.every=1000"]
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        cfg = load_config(None, [*base, f"client.prefix_cache={str(arm == 'cached').lower()}"])
        started = time.perf_counter()
        job = build_job(cfg)
        arms[arm] = {
            "cfg": cfg,
            "job": job,
            "build_seconds": time.perf_counter() - started,
            "state": RoundState(round=0, global_params=job.initial_params),
            "seconds": [],
            "eval_seconds": [],
            "round_peak_mb": [],
            "train_loss": [],
        }
    for round_ in range(1, rounds + 1):
        for arm in ARMS if round_ % 2 else ARMS[::-1]:
            a = arms[arm]
            rss = _round_memory_start()
            started = time.perf_counter()
            record = run_round(a["job"], a["state"])
            a["seconds"].append(time.perf_counter() - started)
            a["round_peak_mb"].append(proc_status_mb("VmHWM") - rss)
            a["train_loss"].append(record["train_loss"])
            started = time.perf_counter()
            metrics = evaluate_global(a["job"], a["state"].global_params)
            a["eval_seconds"].append(time.perf_counter() - started)
            a["test_metrics"] = metrics
    out: dict[str, Any] = {}
    for arm, a in arms.items():
        feature = a["job"].feature("prefix_cache")
        out[arm] = {
            "config": to_toml(a["cfg"]),
            "build_seconds": a["build_seconds"],
            "seconds": a["seconds"],
            "eval_seconds": a["eval_seconds"],
            "round_peak_mb": a["round_peak_mb"],
            "train_loss": a["train_loss"],
            "test_metrics": {k: v for k, v in a["test_metrics"].items() if k != "class_recall"},
            "cache": feature.summary(a["job"], [])["prefix_cache"] if feature else None,
        }
    return out


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    plain, cached = result["plain"], result["cached"]
    later = slice(1, None) if len(plain["seconds"]) > 1 else slice(None)

    def ratios(key: str) -> list[float]:
        pairs = zip(plain[key][later], cached[key][later], strict=True)
        return [p / c for p, c in pairs]

    return {
        "round1_seconds_plain": plain["seconds"][0],
        "round1_seconds_cached": cached["seconds"][0],
        "median_seconds_plain": median(plain["seconds"][later]),
        "median_seconds_cached": median(cached["seconds"][later]),
        "speedup_per_round": ratios("seconds"),
        "median_speedup": median(ratios("seconds")),
        "median_eval_seconds_plain": median(plain["eval_seconds"][later]),
        "median_eval_seconds_cached": median(cached["eval_seconds"][later]),
        "median_eval_speedup": median(ratios("eval_seconds")),
        "median_round_peak_mb_plain": median(plain["round_peak_mb"][later]),
        "median_round_peak_mb_cached": median(cached["round_peak_mb"][later]),
        "round1_peak_mb_cached": cached["round_peak_mb"][0],
        "cache_mib": cached["cache"]["mib"],
        "cache_fill_seconds": cached["cache"]["fill_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = workload_parser(__doc__.split("\n\n")[0], WORKLOADS, rounds=4)
    args = parser.parse_args(argv)
    if serve_worker(args, worker):
        return 0
    report: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "rounds": args.rounds,
        "base_overrides": BASE,
        "timing": "run_round wall time (no evaluation inside), arms alternated per round "
        "(ABBA); evaluate_global timed apart; medians and ratios over rounds 2..",
        "memory": "per round: VmHWM after the round minus VmRSS at its start (after "
        "malloc_trim and a VmHWM reset)",
        "workloads": {},
    }
    names = [args.only] if args.only else list(WORKLOADS)
    for name in names:
        started = time.perf_counter()
        spec = {"overrides": WORKLOADS[name], "rounds": args.rounds}
        result = run_worker(SCRIPT, spec, threads=args.threads)
        report["workloads"][name] = {
            "spec": spec,
            **result,
            "summary": summarise(result),
            "wall_seconds": time.perf_counter() - started,
        }
        print(f"{name}: {report['workloads'][name]['summary']}", flush=True)
    check_fingerprint(report)
    write_json(args.out / "prefix_cache.json", report)
    rows = [
        [
            name,
            f"{s['median_seconds_plain']:.2f}",
            f"{s['median_seconds_cached']:.2f}",
            f"{s['median_speedup']:.2f}",
            f"{s['round1_seconds_plain']:.2f} / {s['round1_seconds_cached']:.2f}",
            f"{s['median_eval_seconds_plain']:.2f} / {s['median_eval_seconds_cached']:.2f}",
            f"{s['median_round_peak_mb_plain']:.0f} / {s['median_round_peak_mb_cached']:.0f}",
            f"{s['cache_mib']:.1f}",
        ]
        for name, w in report["workloads"].items()
        for s in [w["summary"]]
    ]
    headers = [
        "workload",
        "s/round plain",
        "s/round cached",
        "speedup",
        "round 1 s (plain / cached)",
        "eval s (plain / cached)",
        "round peak MiB (plain / cached)",
        "cache MiB",
    ]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
