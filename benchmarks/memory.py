"""Memory of many simulated clients: 1,000 MiniLM + LoRA clients against 10 on TREC-6.

The claim under test (DESIGN.md, "Performance principles"): one frozen backbone is shared by
every simulated client and a client is only its indices (plus, for stateful strategies, a
few tensors), so the peak RSS of a 1,000-client federation stays within 1.5x of a 10-client
one when both train 10 clients per round on the same data.

Each run is its own fresh subprocess; its peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``
(whole process: Python, torch, the backbone, data, training); ``VmRSS`` is also read after
setup, after every round and after ``malloc_trim(0)`` (live memory vs heap glibc kept). Runs:

* FedAvg, 10 clients and 1,000 clients, 10 per round;
* SCAFFOLD (+ SGD, as SCAFFOLD's control-variate estimate assumes), the same two: it
  stores a control variate per client that has ever trained, so its memory grows with the
  number of distinct participants;
* growth probes: 1,000 clients, *all* in one round, FedAvg and SCAFFOLD: the worst case
  for per-client state (1,000 control variates) and for the per-round update buffer.

Usage:
    .venv/bin/python benchmarks/memory.py            # full (about 9 minutes on 2 cores)
    .venv/bin/python benchmarks/memory.py --quick    # tiny version (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    peak_rss_mb,
    proc_status_mb,
    run_worker,
    set_threads,
    write_json,
)

SCRIPT = Path(__file__).resolve()
CLAIM = 1.5
MiB = 1024 * 1024

BASE = [  # default job otherwise: MiniLM + LoRA (r=8, query/value) on TREC-6
    "data.dataset=trec6",
    "model.name=minilm",
    "adapter.method=lora",
    "data.partition=iid",
    "data.min_client_size=1",
    "checkpoint.every=0",
]
SCAFFOLD = ["strategy.name=scaffold", "client.optimizer=sgd"]


def plan(
    many: int, few: int, rounds: int, cohort: int, data: list[str], growth: bool
) -> list[dict]:
    runs = []
    for strategy, extra in (("fedavg", []), ("scaffold", SCAFFOLD)):
        for n in (few, many):
            runs.append(
                {
                    "name": f"{strategy}-{n}",
                    "strategy": strategy,
                    "role": "claim",
                    "overrides": [
                        *BASE,
                        *data,
                        *extra,
                        f"data.num_clients={n}",
                        f"strategy.clients_per_round={cohort}",
                        f"rounds={rounds}",
                        f"eval.every={rounds}",
                    ],
                }
            )
    if growth:
        for strategy, extra in (("fedavg", []), ("scaffold", SCAFFOLD)):
            runs.append(
                {
                    "name": f"{strategy}-{many}-all-in-one-round",
                    "strategy": strategy,
                    "role": "growth",
                    "overrides": [
                        *BASE,
                        *data,
                        *extra,
                        f"data.num_clients={many}",
                        f"strategy.clients_per_round={many}",
                        "rounds=1",
                        "eval.every=1",
                    ],
                }
            )
    return runs


# ------------------------------------------------------------------------------ worker


def _tensor_bytes(params: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in params.values())


def worker(spec: dict[str, Any]) -> None:
    set_threads(spec["threads"])
    from fedfm.config import load_config
    from fedfm.runtime.job import build_job
    from fedfm.runtime.simulation import RoundState, run_round

    t0 = time.perf_counter()
    cfg = load_config(None, spec["overrides"])
    job = build_job(cfg)
    setup = time.perf_counter() - t0
    out: dict[str, Any] = {
        "setup_seconds": setup,
        "rss_after_setup_mb": proc_status_mb("VmHWM"),  # high-water mark so far
        "rss_now_after_setup_mb": proc_status_mb("VmRSS"),  # resident now
        "num_clients": len(job.federation),
        "cohort": job.strategy.cohort_size(len(job.federation)),
        "train_examples": len(job.train),
        "examples_per_client": [
            min(c.num_examples for c in job.federation.clients),
            max(c.num_examples for c in job.federation.clients),
        ],
        "federation_index_bytes": sum(
            c.train.nbytes + c.eval.nbytes for c in job.federation.clients
        ),
        "trainable_bytes": _tensor_bytes(job.initial_params),
        "rounds": [],
    }
    state = RoundState(round=0, global_params=job.initial_params)
    t0 = time.perf_counter()
    record: dict[str, Any] = {}
    for _ in range(cfg.rounds):
        record = run_round(job, state)
        out["rounds"].append(
            {
                "round": state.round,
                "rss_mb": proc_status_mb("VmRSS"),
                "peak_rss_mb": proc_status_mb("VmHWM"),
                "client_states": len(state.client_states),
                "seconds": record["seconds"],
            }
        )
    out["loop_seconds"] = time.perf_counter() - t0
    out["client_states"] = len(state.client_states)
    out["client_state_bytes"] = sum(_tensor_bytes(s) for s in state.client_states.values())
    out["test_accuracy"] = record.get("test_accuracy")
    out["rss_now_end_mb"] = proc_status_mb("VmRSS")
    out["rss_growth_in_loop_mb"] = out["rss_now_end_mb"] - out["rss_now_after_setup_mb"]
    # freed-but-kept heap vs live memory: hand free heap pages back to the OS, then re-read
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    out["rss_after_malloc_trim_mb"] = proc_status_mb("VmRSS")
    out["peak_rss_mb"] = peak_rss_mb()
    Path(spec["result"]).write_text(json.dumps(out))


# ------------------------------------------------------------------------------ driver


def summarise(results: dict[str, dict[str, Any]], many: int, few: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for strategy in ("fedavg", "scaffold"):
        a, b = results[f"{strategy}-{few}"], results[f"{strategy}-{many}"]
        ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        summary[strategy] = {
            f"peak_rss_mb_{few}": a["peak_rss_mb"],
            f"peak_rss_mb_{many}": b["peak_rss_mb"],
            "ratio": ratio,
            "within_claim": ratio <= CLAIM,
            f"client_states_{many}": b["client_states"],
            f"client_state_mb_{many}": b["client_state_bytes"] / MiB,
        }
    sc = results[f"scaffold-{many}"]
    per_state = sc["trainable_bytes"]  # one control variate = one copy of the params
    summary["scaffold"]["bytes_per_client_state"] = per_state
    summary["scaffold"][f"projected_state_mb_all_{many}"] = per_state * many / MiB
    all_fedavg = results.get(f"fedavg-{many}-all-in-one-round")
    all_scaffold = results.get(f"scaffold-{many}-all-in-one-round")
    if all_fedavg and all_scaffold:
        summary["growth"] = {
            "fedavg_all_peak_rss_mb": all_fedavg["peak_rss_mb"],
            "scaffold_all_peak_rss_mb": all_scaffold["peak_rss_mb"],
            "scaffold_all_client_states": all_scaffold["client_states"],
            "scaffold_all_client_state_mb": all_scaffold["client_state_bytes"] / MiB,
            "scaffold_minus_fedavg_peak_mb": all_scaffold["peak_rss_mb"]
            - all_fedavg["peak_rss_mb"],
            "fedavg_all_rss_growth_in_loop_mb": all_fedavg["rss_growth_in_loop_mb"],
            "scaffold_all_rss_growth_in_loop_mb": all_scaffold["rss_growth_in_loop_mb"],
            "fedavg_all_growth_after_trim_mb": all_fedavg["rss_after_malloc_trim_mb"]
            - all_fedavg["rss_now_after_setup_mb"],
            "scaffold_all_growth_after_trim_mb": all_scaffold["rss_after_malloc_trim_mb"]
            - all_scaffold["rss_now_after_setup_mb"],
            "fedavg_all_vs_fedavg_few_cohort_mb": all_fedavg["peak_rss_mb"]
            - results[f"fedavg-{many}"]["peak_rss_mb"],
            # what run_round holds before aggregating: every update's params (+ extras)
            "update_buffer_mb_fedavg": many * per_state / MiB,
            "update_buffer_mb_scaffold": 2 * many * per_state / MiB,
        }
    return summary


def table(report: dict[str, Any]) -> str:
    rows = []
    base = {
        s: report["runs"][f"{s}-{report['few']}"]["peak_rss_mb"] for s in ("fedavg", "scaffold")
    }
    for name, r in report["runs"].items():
        strategy = report["plan"][name]["strategy"]
        rows.append(
            [
                name,
                r["num_clients"],
                r["cohort"],
                len(r["rounds"]),
                f"{r['examples_per_client'][0]}–{r['examples_per_client'][1]}",
                f"{r['rss_after_setup_mb']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['peak_rss_mb'] / base[strategy]:.3f}",
                f"{r['rss_growth_in_loop_mb']:+.0f}",
                f"{r['rss_after_malloc_trim_mb'] - r['rss_now_after_setup_mb']:+.0f}",
                r["client_states"],
                f"{r['client_state_bytes'] / MiB:.1f}",
                f"{r['loop_seconds']:.1f}",
            ]
        )
    headers = [
        "run",
        "clients",
        "per round",
        "rounds",
        "examples/client",
        "RSS after setup MiB",
        "peak RSS MiB",
        f"peak / {report['few']}-client peak",
        "RSS growth in loop MiB",
        "… after malloc_trim MiB",
        "stored client states",
        "their MiB",
        "loop s",
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny version (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the claim runs")
    parser.add_argument(
        "--max-train-examples", type=int, default=0, help="subsample TREC-6 (0 = all, 4,304)"
    )
    parser.add_argument(
        "--no-growth", action="store_true", help="skip the all-clients-in-one-round probes"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    from fedfm.config import load_config, to_dict, to_toml

    if args.quick:
        many, few, cohort, rounds = 100, 10, 10, 1
        data = ["data.max_train_examples=200", "data.max_test_examples=64"]
    else:
        many, few, cohort, rounds = 1000, 10, 10, args.rounds
        data = [f"data.max_train_examples={args.max_train_examples}"]
    runs = plan(many, few, rounds, cohort, data, growth=not args.no_growth)
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    report: dict[str, Any] = {
        "benchmark": "memory",
        "command": " ".join([".venv/bin/python", "benchmarks/memory.py", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": machine_info(args.threads),
        "memory": "getrusage(RUSAGE_SELF).ru_maxrss of a fresh worker process per run "
        "(whole process, setup included); VmRSS / VmHWM from /proc/self/status per round",
        "many": many,
        "few": few,
        "claim": f"peak RSS({many} clients) <= {CLAIM} x peak RSS({few} clients)",
        "plan": {},
        "configs": {},
        "runs": {},
    }
    started = time.perf_counter()
    for spec in runs:
        cfg = load_config(None, spec["overrides"])
        report["plan"][spec["name"]] = spec
        report["configs"][spec["name"]] = to_dict(cfg)
        (out_dir / "memory_configs").mkdir(parents=True, exist_ok=True)
        (out_dir / "memory_configs" / f"{spec['name']}.toml").write_text(to_toml(cfg))
        t = time.perf_counter()
        result = run_worker(SCRIPT, {"overrides": spec["overrides"]}, threads=args.threads)
        report["runs"][spec["name"]] = result
        print(
            f"  {spec['name']:>32}: peak RSS {result['peak_rss_mb']:.0f} MiB "
            f"(after setup {result['rss_after_setup_mb']:.0f}), "
            f"{result['client_states']} client states, loop {result['loop_seconds']:.1f} s "
            f"[{time.perf_counter() - t:.0f} s wall]",
            flush=True,
        )
    report["summary"] = summarise(report["runs"], many, few)
    report["wall_seconds"] = time.perf_counter() - started
    check_fingerprint(report)
    write_json(out_dir / "memory.json", report)

    print()
    print(table(report))
    print()
    for strategy in ("fedavg", "scaffold"):
        s = report["summary"][strategy]
        verdict = "holds" if s["within_claim"] else "FAILS"
        print(f"{strategy}: peak RSS {many} / {few} clients = {s['ratio']:.3f} ({verdict})")
    print(f"\nwrote {out_dir / 'memory.json'} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
