"""fedfm against Flower's simulation engine and a plain PyTorch loop: whole processes.

Three arms do the same federated training of one workload, each as one process timed from
launch to exit:

* **fedfm**: ``fedfm run --set ...`` in the project's venv (its default run folder,
  metrics, a checkpoint every round, ``curves.png`` and the model card, as a user gets them);
* **flower**: ``flower_arm.py``, a Flower ``ClientApp`` + ``ServerApp`` with Flower's
  ``FedAvg`` in ``flwr.simulation.run_simulation`` (clients in Ray actors), in the peers venv;
* **plain**: ``plain_arm.py``, one loop in plain PyTorch, in the peers venv.

Same data split, client partition, initial weights (fedfm's, written by ``--export`` with
fedfm's own ``build_job``), local training (:func:`task.train_client`: fedfm's AdamW,
clipping, balanced softmax, seeded shuffles) and example-weighted FedAvg; the global test set
is scored after every round in all three. Peak memory is the PSS (``/proc/PID/smaps_rollup``)
summed over the process and all its descendants (Flower's Ray processes), sampled about
every 50 ms: a sweep of a large tree takes longer, and the sampler then waits 5 sweep-times,
so that it never takes more than about a sixth of a core from the run it measures.

The arms run in rotating ABBA order (plain-fedfm-flower, flower-fedfm-plain,
fedfm-flower-plain, ...) after one untimed warm-up of each; the claims are the medians of the
per-repetition ratios.

Usage (``make bench-peers`` makes the peers venv first):
    .venv/bin/python benchmarks/peers/bench.py                 # all four workloads
    .venv/bin/python benchmarks/peers/bench.py --only mlp --runs 3
    .venv/bin/python benchmarks/peers/bench.py --quick         # tiny, -> results/quick/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: _common

from _common import (  # noqa: E402
    REPO,
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    offline_env,
    write_json,
)

PEERS_PYTHON = HERE / ".venv" / "bin" / "python"
FEDFM = Path(sys.executable).with_name("fedfm")
ARMS = ("plain", "fedfm", "flower")
WIDE_HIDDEN = 66_666  # 64 -> 66,666 -> 10: 4,999,960 parameters

# overhead.py's and startup.py's MLP job (fedfm's default loss: balanced softmax)
MLP = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=100",
    "strategy.clients_per_round=10",
    "rounds=20",
    "data.min_client_size=5",
    "data.partition=iid",
    "client.lr=0.01",
]

WORKLOADS: dict[str, dict[str, Any]] = {
    "mlp": {
        "what": "digits, 64-64-10 MLP (4,810 params), 100 clients, 10 a round, 20 rounds",
        "kind": "digits",
        "overrides": MLP,
    },
    "clients1000": {
        "what": "the same MLP, 1,000 clients (1-2 examples each), 100 a round, 20 rounds",
        "kind": "digits",
        "overrides": [
            *MLP,
            "data.num_clients=1000",
            "strategy.clients_per_round=100",
            "data.min_client_size=1",
        ],
    },
    "mlp5m": {
        "what": f"digits, 64-{WIDE_HIDDEN:,}-10 MLP (4,999,960 params), 100 clients, "
        "10 a round, 20 rounds",
        "kind": "digits",
        "overrides": MLP,
        "hidden": WIDE_HIDDEN,
    },
    "minilm_lora": {
        "what": "TREC-6, MiniLM + LoRA r=8 (76,038 params), 1,200 training examples over "
        "6 clients (Dirichlet 0.5), 3 a round, 3 rounds, 300 test examples",
        "kind": "fedfm",
        "overrides": [
            "data.num_clients=6",
            "strategy.clients_per_round=3",
            "rounds=3",
            "data.max_train_examples=1200",
            "data.max_test_examples=300",
        ],
        "runs": 2,
    },
}
QUICK = ["rounds=2"]


# ------------------------------------------------------------------------------ export


def export(name: str, path: Path) -> None:
    """Build fedfm's job of a digits workload; write its split, partition and initial weights.

    ``path`` (``.npz``): ``train_rows`` / ``test_rows`` (fedfm's train and test examples as
    rows of scikit-learn's ``load_digits``), ``client_ptr`` / ``client_idx`` (each client's
    training indices, CSR) and ``init/<name>`` (the initial tensors); ``path.json``: the
    hidden width, the number of labels and the hyperparameters. A ``fedfm`` workload (text)
    is only built, which fills fedfm's token cache for the timed runs.
    """
    import numpy as np
    import task
    from fedfm_arm import use_wide_mlp
    from sklearn.datasets import load_digits

    from fedfm.config import load_config
    from fedfm.runtime.job import build_job

    spec = json.loads(path.with_suffix(".spec.json").read_text())
    if spec.get("hidden"):
        use_wide_mlp(spec["hidden"])
    job = build_job(load_config(None, spec["overrides"]))
    if spec["kind"] != "digits":  # the arms build the job themselves
        params = sum(t.numel() for t in job.initial_params.values())
        path.with_suffix(".json").write_text(json.dumps({"params": params}))
        return
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    free: dict[bytes, list[int]] = {}  # (features, label) -> unused digits rows
    for row, (features, label) in enumerate(zip(x, digits.target, strict=True)):
        free.setdefault(features.tobytes() + bytes([label]), []).append(row)

    def rows(enc: Any) -> np.ndarray:
        pairs = zip(enc.features, enc.labels, strict=True)
        keys = [f.tobytes() + bytes([int(y)]) for f, y in pairs]
        return np.array([free[k].pop(0) for k in keys], dtype=np.int64)

    train_rows, test_rows = rows(job.train), rows(job.test)
    clients = [c.train for c in job.federation.clients]
    arrays = {
        "train_rows": train_rows,
        "test_rows": test_rows,
        "client_ptr": np.cumsum([0, *map(len, clients)]),
        "client_idx": np.concatenate(clients).astype(np.int64),
        **{f"init/{n}": t.numpy() for n, t in job.initial_params.items()},
    }
    np.savez(path, **arrays)
    meta = {
        "hidden": job.model.hidden.out_features,
        "num_labels": job.task.num_labels,
        "params": sum(t.numel() for t in job.initial_params.values()),
        "hp": task.hyperparameters(job.cfg, job.strategy.cohort_size(len(job.federation))),
    }
    path.with_suffix(".json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------ measuring


def _stat(pid: int | str) -> list[bytes] | None:
    """``/proc/PID/stat``'s fields after the command name (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def _tree(root: int) -> dict[int, tuple[bytes, int]]:
    """``root`` and all its descendants, each with its start time (which tells a reused pid
    apart) and its CPU time so far in clock ticks: one pass over ``/proc``."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[bytes, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
            info[int(entry)] = (fields[19], int(fields[11]) + int(fields[12]))
    found: dict[int, tuple[bytes, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        found[pid] = info.get(pid, (b"", 0))
        todo.extend(children.get(pid, []))
    return found


ROLLUP = (b"Pss:", b"Pss_Anon:", b"Pss_File:", b"Pss_Shmem:", b"Rss:")


def _rollup_kb(pid: int) -> list[int]:
    """``ROLLUP``'s fields of ``/proc/PID/smaps_rollup`` in kB (zeros once it is gone)."""
    values = [0] * len(ROLLUP)
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.split(b" ", 1)[0] in ROLLUP:
                    values[ROLLUP.index(line.split(b" ", 1)[0])] = int(line.split()[1])
    except OSError:  # gone, or a zombie
        pass
    return values


def _alive(pid: int, started: bytes) -> bool:
    """The same process (pid and start time) is still running (not a zombie)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != b"Z"


def timed(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``command`` to its exit: wall seconds, peak PSS of its process tree, its RESULT."""
    samples, interval_sum, peak_procs = 0, 0.0, 0
    peak = [0] * len(ROLLUP)  # the sums at the sample of the highest PSS
    seen: dict[int, tuple[bytes, int]] = {}  # every process of the tree: (start, CPU ticks)
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        ended: dict[str, Any] = {}

        def wait() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            cpu = usage.ru_utime + usage.ru_stime
            ended.update(t=time.perf_counter(), status=status, maxrss=usage.ru_maxrss, cpu=cpu)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        tree: dict[int, Any] = {proc.pid: (b"", 0)}
        tree_at = 0.0
        while not ended:
            now = time.perf_counter()
            if now - tree_at > 0.25:  # new processes (Ray starts its own) four times a second
                tree, tree_at = _tree(proc.pid), now
                seen.update(tree)
            total = [sum(v) for v in zip(*(_rollup_kb(pid) for pid in tree), strict=True)]
            sweep = time.perf_counter() - now
            if not ended:
                peak = max(peak, total)  # the first field is PSS
                peak_procs = max(peak_procs, len(tree))
                samples += 1
            pause = max(0.05, 5 * sweep) - sweep
            interval_sum += sweep + pause
            waiter.join(pause)
        wall = ended["t"] - started
    rc = os.waitstatus_to_exitcode(ended["status"])
    # the main process's own CPU exactly (os.wait4); its descendants' as last sampled (a sample
    # can miss a process: one fedfm run read 0.0 for the whole tree before this)
    cpu_ticks = sum(ticks for pid, (_, ticks) in seen.items() if pid != proc.pid)
    seen.pop(proc.pid, None)
    leftover = _reap({pid: started for pid, (started, _) in seen.items()})
    text = log.read_text()
    if rc != 0:
        sys.stderr.write(text[-4000:])
        raise RuntimeError(f"exit {rc}: {' '.join(command)}")
    results = [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")]
    return {
        "wall_seconds": wall,
        "peak_pss_mb": peak[0] / 1024,
        "at_peak_mb": {k.decode()[:-1]: v / 1024 for k, v in zip(ROLLUP, peak, strict=True)},
        "main_peak_rss_mb": ended["maxrss"] / 1024,
        # the main process's CPU seconds, plus each descendant's as last seen (every 0.25 s)
        "tree_cpu_seconds_sampled": ended["cpu"] + cpu_ticks / os.sysconf("SC_CLK_TCK"),
        "main_cpu_seconds": ended["cpu"],
        "peak_processes": peak_procs,
        "pss_samples": samples,
        "pss_mean_interval_s": interval_sum / max(samples, 1),
        "leftover_processes": leftover,
        "result": results[-1] if results else None,
    }


def _reap(pids: dict[int, bytes], grace: float = 15.0) -> int:
    """Descendants still alive after the main process exited: wait, then end them (by pid)."""
    deadline = time.perf_counter() + grace
    alive = {p: t for p, t in pids.items() if _alive(p, t)}
    while alive and time.perf_counter() < deadline:
        time.sleep(0.2)
        alive = {p: t for p, t in alive.items() if _alive(p, t)}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return len(alive)


def fedfm_result(run_dir: Path) -> dict[str, Any]:
    """The last scored round of a fedfm run folder's ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    last = [json.loads(x) for x in lines if '"test_accuracy"' in x][-1]
    return {
        "arm": "fedfm",
        "accuracy": last["test_accuracy"],
        "macro_f1": last["test_macro_f1"],
        "loss": last["test_loss"],
        "round": last["round"],
    }


# ------------------------------------------------------------------------------ one workload


def commands(name: str, spec: dict[str, Any], tmp: Path) -> dict[str, list[str]]:
    run_args = ["run", *[a for o in spec["overrides"] for a in ("--set", o)]]
    run_args += ["--set", f"output_dir={tmp}", "--set", f"name=peers-{name}", "--overwrite"]
    if spec.get("hidden"):
        fedfm = [sys.executable, str(HERE / "fedfm_arm.py"), "--hidden", str(spec["hidden"])]
    else:
        fedfm = [str(FEDFM)] if FEDFM.is_file() else [sys.executable, "-m", "fedfm.cli"]
    arm_spec = json.dumps({k: v for k, v in spec.items() if k != "what"})
    return {
        "plain": [str(PEERS_PYTHON), str(HERE / "plain_arm.py"), arm_spec],
        "fedfm": [*fedfm, *run_args],
        "flower": [str(PEERS_PYTHON), str(HERE / "flower_arm.py"), arm_spec],
    }


def order(rep: int) -> list[str]:
    """Rotating ABBA: rep 0 plain-fedfm-flower, rep 1 its reverse, rep 2 rotated by one, ..."""
    shift = (rep // 2) % len(ARMS)
    base = [*ARMS[shift:], *ARMS[:shift]]
    return base if rep % 2 == 0 else base[::-1]


def run_workload(
    name: str, spec: dict[str, Any], runs: int, env: dict[str, str], tmp: Path, warm: set[str]
) -> dict[str, Any]:
    from fedfm.config import load_config, to_toml

    workload_file = tmp / f"{name}.npz"
    spec = {**spec, "workload_file": str(workload_file)}
    workload_file.with_suffix(".spec.json").write_text(json.dumps(spec))
    print(f"[{name}] export (fedfm build_job, untimed)", flush=True)
    subprocess.run(
        [sys.executable, str(HERE / "bench.py"), "--export", str(workload_file)],
        cwd=REPO,
        env=env,
        check=True,
    )
    meta = json.loads(workload_file.with_suffix(".json").read_text())
    cmds = commands(name, spec, tmp)
    for arm in ARMS:  # warm-up once per arm and kind: the file cache, .pyc files, Ray's
        if f"{arm}:{spec['kind']}" not in warm:
            print(f"[{name}] warm-up {arm}", flush=True)
            timed(cmds[arm], env, tmp / "warmup.log")
            warm.add(f"{arm}:{spec['kind']}")
    measured: list[dict[str, Any]] = []
    for rep in range(runs):
        for position, arm in enumerate(order(rep)):
            got = timed(cmds[arm], env, tmp / f"{name}-{arm}-{rep}.log")
            if arm == "fedfm":
                got["result"] = fedfm_result(tmp / f"peers-{name}")
            measured.append({"arm": arm, "rep": rep, "position": position, **got})
            acc = (got["result"] or {}).get("accuracy")
            print(
                f"[{name}] rep {rep} {arm:6} {got['wall_seconds']:7.2f} s  "
                f"PSS {got['peak_pss_mb']:7.0f} MB  procs {got['peak_processes']}  acc {acc}",
                flush=True,
            )
    cfg = load_config(None, spec["overrides"])  # mlp5m: plus the hidden width (fedfm_arm.py)
    return {
        "what": spec["what"],
        "overrides": spec["overrides"],
        "hidden": spec.get("hidden"),
        "params": meta.get("params"),
        "hyperparameters": meta.get("hp"),
        "config_toml": to_toml(cfg),
        "commands": {a: " ".join(c) for a, c in cmds.items()},
        "runs": measured,
        "summary": summarize(measured),
    }


def summarize(measured: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in ARMS}
    for m in measured:
        by[m["arm"]][m["rep"]] = m
    out: dict[str, Any] = {}
    for arm in ARMS:
        runs = list(by[arm].values())
        out[arm] = {
            "wall_seconds_median": median([r["wall_seconds"] for r in runs]),
            "peak_pss_mb_median": median([r["peak_pss_mb"] for r in runs]),
            "pss_anon_mb_median": median([r["at_peak_mb"]["Pss_Anon"] for r in runs]),
            "tree_cpu_seconds_median": median([r["tree_cpu_seconds_sampled"] for r in runs]),
            "peak_processes_max": max(r["peak_processes"] for r in runs),
            "accuracy": [(r["result"] or {}).get("accuracy") for r in runs],
        }
    for num, den in (("fedfm", "plain"), ("fedfm", "flower"), ("flower", "plain")):
        for key, short in (("wall_seconds", "time"), ("peak_pss_mb", "pss")):
            reps = sorted(set(by[num]) & set(by[den]))
            per_rep = [by[num][r][key] / by[den][r][key] for r in reps]
            out[f"{short}_ratio_{num}_{den}"] = {
                "median_of_reps": median(per_rep),
                "per_rep": per_rep,
                "of_medians": out[num][f"{key}_median"] / out[den][f"{key}_median"],
            }
    return out


# ------------------------------------------------------------------------------ main


def versions() -> dict[str, Any]:
    code = (
        "import json, importlib.metadata as m\n"
        "print(json.dumps({p: m.version(p) for p in "
        "('flwr', 'ray', 'torch', 'numpy', 'transformers', 'peft', 'scikit-learn')}))"
    )
    peers = subprocess.run([str(PEERS_PYTHON), "-c", code], capture_output=True, text=True)
    mine = code.replace("'flwr', ", "")
    project = subprocess.run([sys.executable, "-c", mine], capture_output=True, text=True)
    return {"peers_venv": json.loads(peers.stdout), "project_venv": json.loads(project.stdout)}


def busy() -> list[str]:
    """Other heavy jobs on the machine at this moment (the E7 experiment shares it)."""
    found = subprocess.run(["pgrep", "-af", "fedfm exp"], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def tables(report: dict[str, Any]) -> str:
    rows = []
    for name, w in report["workloads"].items():
        s = w["summary"]
        n = len(s["plain"]["accuracy"])
        rows.append(
            [
                name,
                n,
                *(s[a]["wall_seconds_median"] for a in ARMS),
                s["time_ratio_fedfm_plain"]["median_of_reps"],
                s["time_ratio_fedfm_flower"]["median_of_reps"],
                s["time_ratio_flower_plain"]["median_of_reps"],
                *(s[a]["peak_pss_mb_median"] for a in ARMS),
                s["pss_ratio_fedfm_flower"]["median_of_reps"],
                " / ".join(f"{median(s[a]['accuracy']):.3f}" for a in ARMS),
            ]
        )
    return markdown_table(
        [
            "workload",
            "runs",
            "plain s",
            "fedfm s",
            "Flower s",
            "fedfm / plain",
            "fedfm / Flower",
            "Flower / plain",
            "plain PSS MB",
            "fedfm PSS MB",
            "Flower PSS MB",
            "PSS fedfm / Flower",
            "test acc plain / fedfm / Flower",
        ],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated workloads (default all)")
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the MLP workloads")
    parser.add_argument("--text-runs", type=int, default=0, help="of minilm_lora (0: its own)")
    parser.add_argument("--threads", type=int, default=1, help="math threads per process")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 run -> results/quick/")
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.export:
        export("", args.export)
        return 0
    if not PEERS_PYTHON.is_file():
        raise SystemExit(f"{PEERS_PYTHON} is missing: run `make bench-peers` (it makes it)")
    names = args.only.split(",") if args.only else list(WORKLOADS)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    env = offline_env(args.threads)
    env.update(
        BENCH_THREADS=str(args.threads),
        FLWR_TELEMETRY_ENABLED="0",  # no network here: Flower's usage events could only wait
        RAY_USAGE_STATS_ENABLED="0",
    )
    report: dict[str, Any] = {
        "benchmark": "peers",
        "command": " ".join([".venv/bin/python", "benchmarks/peers/bench.py", *sys.argv[1:]]),
        "machine": machine_info(args.threads),
        "versions": versions(),
        "other_jobs_at_start": busy(),
        "env": {k: env[k] for k in ("BENCH_THREADS", "OMP_NUM_THREADS", "FLWR_TELEMETRY_ENABLED")},
        "flower_backend": "run_simulation, Ray: init_args num_cpus=2, client_resources "
        "num_cpus=2 (Flower's default) -> one ClientApp actor",
        "timing": "whole process, launch to exit; peak PSS summed over the process tree",
        "workloads": {},
    }
    started = time.perf_counter()
    warm: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="fedfm-peers-") as tmp:
        for name in names:
            spec = dict(WORKLOADS[name])
            runs = spec.pop("runs", args.runs)
            if spec["kind"] != "digits" and args.text_runs:
                runs = args.text_runs
            if args.quick:
                spec["overrides"], runs = [*spec["overrides"], *QUICK], 1
            report["workloads"][name] = run_workload(name, spec, runs, env, Path(tmp), warm)
            write_json(out / "peers.json", report)  # what is done so far
    report["other_jobs_at_end"] = busy()
    report["load_average_at_end"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - started
    check_fingerprint(report)
    write_json(out / "peers.json", report)
    print()
    print(tables(report))
    print(f"\nwrote {out / 'peers.json'} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
