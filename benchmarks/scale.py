"""Scale: 100, 1,000 and 10,000 simulated clients, each a fresh `fedfm run` in its own process.

The claims under test (issue 21, item 7): with a fixed cohort (10 clients a round) and the
same local work per client, the seconds per round do not depend on the number of clients,
and the peak RSS of a 10,000-client run stays within 1.5x of a 100-client one.

What is held fixed across the three arms of a setting, so that only the number of clients
changes: the training pool (20,000 examples), the cohort (10 a round), each client's local
work (one step, ``client.steps = 1``, of ``client.batch_size = 2``: the same work whether a
client holds 2 examples or 200), the model, the test set and one evaluation at the end.
``data.partition = iid`` and ``data.min_client_size = 1``: a Dirichlet(0.5) split (the
default alpha) of 20,000 examples among 10,000 clients leaves some client empty in each of
its 1,000 draws and is refused.

Neither built-in pool has 10,000 examples (training examples: digits 1,438, TREC-6 4,304)
and a client needs at least one, so each setting trains on its dataset's training pool
*tiled* (repeated until it holds 20,000 examples: 14 times for digits, 5 for TREC-6; exact
duplicates; the test set unchanged), registered in the worker as ``<dataset>_tiled``, then
subsampled to 20,000 (``data.max_train_examples``). At 10,000 clients every client then
holds 2 examples; at 100, 200 (180 to train on, the default ``data.client_eval_fraction =
0.1`` held out).

Each arm runs ``fedfm.runtime.run.execute`` (metrics.jsonl, a checkpoint every round, the
final adapter and model card) in a fresh subprocess with one math thread, each arm twice
in alternating order:

* seconds per round: between the starts of successive rounds (the round, its metrics line
  and its checkpoint), the last round up to the run's finish; the median over rounds;
* setup seconds: from the start of ``execute`` to the first round (data, tokenisation,
  the federation, the model);
* peak RSS: ``getrusage(RUSAGE_SELF).ru_maxrss`` of the worker at the end (whole process),
  and ``VmHWM`` when the first round starts (the setup's peak).

Usage:
    .venv/bin/python benchmarks/scale.py            # full (about 1.5 minutes on 2 cores)
    .venv/bin/python benchmarks/scale.py --quick    # 100 and 1,000 clients, 2 rounds (seconds)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    peak_rss_mb,
    proc_status_mb,
    run_worker,
    set_threads,
    write_json,
)

SCRIPT = Path(__file__).resolve()
CLIENTS = (100, 1_000, 10_000)
POOL = 20_000  # training examples in every arm
MEMORY_GOAL = 1.5  # peak RSS of the largest arm over the smallest

COMMON = [
    f"data.max_train_examples={POOL}",
    "data.partition=iid",
    "data.min_client_size=1",
    "strategy.clients_per_round=10",
    "client.steps=1",
    "client.batch_size=2",
    "eval.per_client=false",
]
SETTINGS: dict[str, dict[str, Any]] = {
    "mlp": {
        "dataset": "digits",
        "overrides": ["model.name=mlp", "adapter.method=full", "client.lr=0.01"],
        "rounds": 8,
        "repeats": 2,
    },
    "minilm_lora": {  # the default model and adapter: MiniLM + LoRA r=8
        "dataset": "trec6",
        "overrides": ["data.max_test_examples=100"],
        "rounds": 5,
        "repeats": 2,
    },
}
QUICK = {"clients": (100, 1_000), "rounds": 2, "repeats": 1}


def tiled_name(dataset: str) -> str:
    return f"{dataset}_tiled"


def register_tiled(dataset: str) -> str:
    """Register ``<dataset>_tiled``: the built-in dataset with its training pool repeated
    as often as it takes to hold :data:`POOL` examples (test set unchanged); return the name."""
    import math

    import numpy as np

    from fedfm.datasets.common import DATASETS, BuiltinDataset, load_dataset, register
    from fedfm.resources.types import Dataset, Split

    def load() -> Dataset:
        ds = load_dataset(dataset)
        train = ds.train
        tile = math.ceil(POOL / len(train))
        inputs = (
            np.concatenate([train.inputs] * tile)
            if isinstance(train.inputs, np.ndarray)
            else list(train.inputs) * tile
        )
        labels = None if train.labels is None else np.concatenate([train.labels] * tile)
        return Dataset(name, ds.task, Split(inputs, labels), ds.test, ds.label_names, ds.modality)

    name = tiled_name(dataset)
    register(BuiltinDataset(name, load, DATASETS.get(dataset).label_names))
    return name


def overrides_for(setting: dict[str, Any], clients: int, rounds: int) -> list[str]:
    return [
        f"data.dataset={tiled_name(setting['dataset'])}",
        *COMMON,
        *setting["overrides"],
        f"data.num_clients={clients}",
        f"rounds={rounds}",
        f"eval.every={rounds}",  # once, at the end
        f"name=scale-{clients}",
    ]


# ------------------------------------------------------------------------------ worker


def worker(spec: dict[str, Any]) -> None:
    """One run of ``spec["overrides"]`` through ``execute``, timed round by round."""
    set_threads(spec["threads"])
    import numpy as np
    from rich.console import Console

    import fedfm.runtime.run as run_mod
    from fedfm.config import load_config

    register_tiled(spec["dataset"])
    cfg = load_config(None, spec["overrides"])
    marks: list[float] = []
    seen: dict[str, Any] = {}
    run_round, finish = run_mod.run_round, run_mod._finish

    def timed_round(job: Any, state: Any, **kwargs: Any) -> dict[str, Any]:
        if not marks:  # the first round starts: setup is over
            seen["rss_after_setup_mb"] = proc_status_mb("VmHWM")
            sizes = np.array([c.num_examples for c in job.federation.clients])
            seen["federation"] = {
                "clients": len(job.federation),
                "train_examples_per_client": [int(sizes.min()), int(np.median(sizes))],
                "index_bytes": int(
                    sum(c.train.nbytes + c.eval.nbytes for c in job.federation.clients)
                ),
            }
        marks.append(time.perf_counter())
        record = run_round(job, state, **kwargs)
        seen["state_entries"] = len(state.client_states) + len(state.personal)
        seen["record_bytes"] = len(json.dumps(record, default=str))
        return record

    def timed_finish(*args: Any, **kwargs: Any) -> dict[str, Any]:
        marks.append(time.perf_counter())
        return finish(*args, **kwargs)

    run_mod.run_round, run_mod._finish = timed_round, timed_finish
    with tempfile.TemporaryDirectory(prefix="fedfm-scale-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        start = time.perf_counter()
        summary = run_mod.execute(
            cfg, run_dir=run_dir, console=Console(file=io.StringIO()), plot=False
        )
        wall = time.perf_counter() - start
        checkpoint_bytes = (run_dir / run_mod.CHECKPOINT_FILE).stat().st_size
    rounds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    out = {
        "setup_seconds": marks[0] - start,
        "round_seconds": rounds,
        "round_seconds_median": median(rounds),
        "wall_seconds": wall,
        "peak_rss_mb": peak_rss_mb(),
        "checkpoint_bytes": checkpoint_bytes,
        "final": summary["final"],
        **seen,
    }
    Path(spec["result"]).write_text(json.dumps(out, default=str))


# ------------------------------------------------------------------------------ driver


def bench_setting(
    name: str,
    setting: dict[str, Any],
    clients: tuple[int, ...],
    rounds: int,
    repeats: int,
    threads: int,
) -> dict[str, Any]:
    from fedfm.config import load_config, to_dict, to_toml

    register_tiled(setting["dataset"])  # so load_config knows the name
    arms: dict[str, Any] = {}
    for rep in range(repeats):
        # alternate the order, so that drifting machine load hits every arm alike
        for n in clients if rep % 2 == 0 else clients[::-1]:
            overrides = overrides_for(setting, n, rounds)
            spec = {
                "dataset": setting["dataset"],
                "overrides": overrides,
            }
            t = time.perf_counter()
            result = run_worker(SCRIPT, spec, threads=threads)
            print(
                f"  {name} {n:>6} clients: {result['round_seconds_median']:.3f} s/round, "
                f"setup {result['setup_seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MiB "
                f"[{time.perf_counter() - t:.0f} s wall]",
                flush=True,
            )
            arm = arms.setdefault(str(n), {"overrides": overrides, "runs": []})
            arm["runs"].append(result)
    for arm in arms.values():
        cfg = load_config(None, arm["overrides"])
        arm["config"], arm["config_toml"] = to_dict(cfg), to_toml(cfg)
        runs = arm["runs"]
        arm["summary"] = {
            "round_seconds_median": median([r["round_seconds_median"] for r in runs]),
            "setup_seconds": median([r["setup_seconds"] for r in runs]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in runs]),
            "peak_rss_mb_range": [
                min(r["peak_rss_mb"] for r in runs),
                max(r["peak_rss_mb"] for r in runs),
            ],
            "rss_after_setup_mb": median([r["rss_after_setup_mb"] for r in runs]),
            "checkpoint_bytes": runs[0]["checkpoint_bytes"],
            "record_bytes": runs[0]["record_bytes"],
            "state_entries": runs[0]["state_entries"],
            "federation": runs[0]["federation"],
            "test_accuracy": runs[0]["final"].get("test_accuracy"),
        }
    base = arms[str(min(clients))]["summary"]
    for arm in arms.values():
        s = arm["summary"]
        s["rss_ratio_to_smallest"] = s["peak_rss_mb"] / base["peak_rss_mb"]
        s["round_seconds_ratio_to_smallest"] = (
            s["round_seconds_median"] / base["round_seconds_median"]
        )
    return {"dataset": tiled_name(setting["dataset"]), "arms": arms}


def table(report: dict[str, Any]) -> str:
    rows = []
    for name, res in report["settings"].items():
        for n, arm in res["arms"].items():
            s = arm["summary"]
            fed = s["federation"]
            ratio = s["rss_ratio_to_smallest"]
            rows.append(
                [
                    name,
                    f"{int(n):,}",
                    f"{fed['train_examples_per_client'][0]}–{fed['train_examples_per_client'][1]}",
                    s["setup_seconds"],
                    s["round_seconds_median"],
                    f"{s['round_seconds_ratio_to_smallest']:.2f}",
                    f"{s['peak_rss_mb']:.0f}",
                    f"{ratio:.3f}" + (" ✓" if ratio <= MEMORY_GOAL else " ✗"),
                    f"{fed['index_bytes'] / 2**20:.2f}",
                    f"{s['checkpoint_bytes']:,}",
                    f"{s['record_bytes']:,}",
                ]
            )
    headers = [
        "setting",
        "clients",
        "train examples per client (min–median)",
        "setup s",
        "s/round (median)",
        "s/round ratio",
        "peak RSS MiB",
        f"RSS ratio (goal ≤ {MEMORY_GOAL})",
        "client index MiB",
        "checkpoint bytes",
        "round record bytes",
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 clients, 2 rounds")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument(
        "--only", choices=sorted(SETTINGS), action="append", help="run only these settings"
    )
    parser.add_argument("--repeats", type=int, default=0, help="runs per arm (0: the setting's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    names = args.only or list(SETTINGS)
    report: dict[str, Any] = {
        "benchmark": "scale",
        "command": " ".join([".venv/bin/python", "benchmarks/scale.py", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": machine_info(args.threads),
        "timing": "seconds between the starts of successive rounds (round, metrics line, "
        "checkpoint), median over rounds; setup: execute's start to the first round",
        "memory": "getrusage(RUSAGE_SELF).ru_maxrss of a fresh worker process per run",
        "held_fixed": {"pool": POOL, "common_overrides": COMMON},
        "settings": {},
    }
    started = time.perf_counter()
    for name in names:
        setting = SETTINGS[name]
        clients = QUICK["clients"] if args.quick else CLIENTS
        rounds = QUICK["rounds"] if args.quick else setting["rounds"]
        repeats = args.repeats or (QUICK["repeats"] if args.quick else setting["repeats"])
        print(f"[{name}] {clients} clients, {rounds} rounds, {repeats} run(s) each", flush=True)
        report["settings"][name] = bench_setting(
            name, setting, clients, rounds, repeats, args.threads
        )
    report["wall_seconds"] = time.perf_counter() - started
    check_fingerprint(report)
    json_name = "scale.json" if set(names) == set(SETTINGS) else f"scale-{'-'.join(names)}.json"
    write_json(out_dir / json_name, report)
    print()
    print(table(report))
    print(f"\nwrote {out_dir / json_name} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
