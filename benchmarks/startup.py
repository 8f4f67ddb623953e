"""Start-up cost: a whole ``fedfm run`` process on the small-MLP job against a plain script.

The job is ``overhead.py``'s MLP workload (digits, a 64-64-10 MLP trained in full, 100 clients,
10 a round, 20 rounds). Each measurement is one fresh process, timed from launch to exit
(wall clock, ``perf_counter``; user + system CPU seconds and peak RSS from ``os.wait4``):
``fedfm run --set ...`` (the console script: argument parsing, preflight, the run folder,
metrics, checkpoints, ``curves.png``, the model card) and ``startup_plain.py`` (torch, numpy
and scikit-learn's ``load_digits``, the same training and a test score every round, nothing
written). The two alternate ABBA (plain-fedfm, fedfm-plain, ...) after one untimed warm-up
each, so machine noise and the file cache hit both alike. Goal: the median of the pairs'
ratios (fedfm / plain) <= 1.5.

It also runs ``python -X importtime`` on ``import fedfm.runtime.run`` and on the whole CLI
process, and reports the slowest imports that fedfm code (or the process itself) asks for,
and whether transformers, peft, opacus, grpc, ray or cryptography were imported at all.

Usage:
    .venv/bin/python benchmarks/startup.py            # 5 runs each, about 2 minutes on 2 cores
    .venv/bin/python benchmarks/startup.py --runs 3   # fewer
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    offline_env,
    write_json,
)
from overhead import MLP as OVERHEAD_MLP

PLAIN = Path(__file__).resolve().parent / "startup_plain.py"
# overhead.py's MLP job with fedfm's default loss: overhead.py sets client.loss=ce for its
# plain loop; startup_plain.py does the default (balanced) loss, as a `fedfm run` user gets
MLP = [o for o in OVERHEAD_MLP if not o.startswith("client.loss=")]
GOAL = 1.5
HEAVY = ("transformers", "peft", "opacus", "grpc", "ray", "cryptography")
TOP = 12  # slowest imports listed
_KEYS = ("wall_seconds", "cpu_seconds", "peak_rss_mb")  # per process, from os.wait4


def plain_args(cfg: Any) -> list[str]:
    """``startup_plain.py``'s arguments for the resolved config (refusing what it cannot do)."""
    unsupported = {
        "client.loss": (cfg.client.loss, "balanced"),
        "client.optimizer": (cfg.client.optimizer, "adamw"),
        "client.steps": (cfg.client.steps, 0),
        "eval.every": (cfg.eval.every, 1),
        "strategy.name": (cfg.strategy.name, "fedavg"),
    }
    for key, (value, needed) in unsupported.items():
        if value != needed:
            raise SystemExit(f"{key} = {value!r}: startup_plain.py does only {needed!r}")
    return [
        *("--clients", str(cfg.data.num_clients)),
        *("--cohort", str(cfg.strategy.clients_per_round)),
        *("--rounds", str(cfg.rounds)),
        *("--epochs", str(cfg.client.epochs)),
        *("--batch-size", str(cfg.client.batch_size)),
        *("--lr", str(cfg.client.lr)),
        *("--weight-decay", str(cfg.client.weight_decay)),
        *("--max-grad-norm", str(cfg.client.max_grad_norm)),
        *("--client-eval-fraction", str(cfg.data.client_eval_fraction)),
        *("--eval-batch-size", str(cfg.eval.batch_size)),
        *("--seed", str(cfg.seed)),
    ]


def run_args(overrides: list[str]) -> list[str]:
    """``run --set ... --overwrite``: the arguments of ``fedfm``."""
    return ["run", *[arg for item in overrides for arg in ("--set", item)], "--overwrite"]


def fedfm_command(overrides: list[str]) -> list[str]:
    """``fedfm run ...`` through the console script (``python -m fedfm.cli`` without one)."""
    script = Path(sys.executable).with_name("fedfm")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "fedfm.cli"]
    return [*head, *run_args(overrides)]


def timed(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` to its exit: wall and CPU seconds, peak RSS, its last output line."""
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        sys.stderr.write(output[-4000:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(command)}")
    lines = [line for line in output.splitlines() if line.strip()]
    return {
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "last_round": next((x for x in reversed(lines) if x.startswith("round")), ""),
    }


# ------------------------------------------------------------------------------ importtime

_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """``-X importtime``'s entries, each with its importer (``None``: the process itself)."""
    rows = [
        (m[4], len(m[3]) // 2, int(m[2]) / 1e6) for m in map(_LINE.match, stderr.splitlines()) if m
    ]
    entries: list[dict[str, Any]] = []
    stack: dict[int, str] = {}  # children are printed before their parent: walk backwards
    for name, depth, cumulative in reversed(rows):
        stack[depth] = name
        parent = stack.get(depth - 1) if depth else None
        entries.append({"module": name, "seconds": cumulative, "importer": parent})
    return entries[::-1]


def _asked_for(entry: dict[str, Any]) -> bool:
    """An import made by the process itself, or a library's import made by fedfm code."""
    importer = entry["importer"]
    if importer is None:
        return True
    return importer.split(".")[0] == "fedfm" and entry["module"].split(".")[0] != "fedfm"


def import_summary(command: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    """Median seconds of the slowest imports asked for by fedfm code or the process itself.

    An import the process itself asks for is a statement of ``-c`` or a call at run time
    (fedfm's lazy imports, and torch's own: AdamW's first use imports ``torch._dynamo``).
    """
    per_run: list[dict[str, tuple[float, str | None]]] = []
    modules: set[str] = set()
    for _ in range(runs):
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise RuntimeError(f"exit {done.returncode}: {' '.join(command)}")
        entries = parse_importtime(done.stderr)
        modules |= {e["module"] for e in entries}
        per_run.append(
            {e["module"]: (e["seconds"], e["importer"]) for e in entries if _asked_for(e)}
        )
    names = set.intersection(*(set(r) for r in per_run))
    rows = [
        {
            "module": name,
            "importer": per_run[0][name][1] or "(the process)",
            "seconds": median([r[name][0] for r in per_run]),
        }
        for name in names
    ]
    rows.sort(key=lambda r: -r["seconds"])
    top_level = [r for r in rows if r["importer"] == "(the process)"]
    return {
        "command": " ".join(command),
        "runs": runs,
        "import_seconds_total": sum(r["seconds"] for r in top_level),
        "heavy_imported": sorted(m for m in HEAVY if any(x.split(".")[0] == m for x in modules)),
        "slowest": rows[:TOP],
    }


# ------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per process")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()

    from fedfm.config import load_config, to_dict, to_toml

    env = offline_env(args.threads)
    report: dict[str, Any] = {
        "benchmark": "startup",
        "command": " ".join([".venv/bin/python", "benchmarks/startup.py", *sys.argv[1:]]),
        "machine": machine_info(args.threads),
        "timing": "whole process, launch to exit (perf_counter); cpu and rss from os.wait4",
        "goal_ratio": GOAL,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedfm-startup-") as tmp:
        overrides = [*MLP, f"output_dir={tmp}", "name=startup"]
        cfg = load_config(None, overrides)
        commands = {
            "plain": [sys.executable, str(PLAIN), *plain_args(cfg)],
            "fedfm": fedfm_command(overrides),
        }
        report.update(
            overrides=MLP,
            config=to_dict(cfg),
            config_toml=to_toml(cfg),
            commands={k: " ".join(v) for k, v in commands.items()},
        )
        for name, command in commands.items():  # warm-up: the file cache, .pyc files
            print(f"warm-up: {name}", flush=True)
            timed(command, env)
        runs: list[dict[str, Any]] = []
        for i in range(args.runs):
            for name in ("plain", "fedfm") if i % 2 == 0 else ("fedfm", "plain"):  # ABBA
                runs.append({"kind": name, "pair": i, **timed(commands[name], env)})
                print(f"  {name:5} {runs[-1]['wall_seconds']:.2f} s", flush=True)
        print("importtime", flush=True)
        imports = {
            "import fedfm.runtime.run": import_summary(
                [sys.executable, "-X", "importtime", "-c", "import fedfm.runtime.run"],
                env,
                args.runs,
            ),
            "fedfm run (whole process)": import_summary(
                [sys.executable, "-X", "importtime", "-m", "fedfm.cli", *run_args(overrides)],
                env,
                1,
            ),
        }
    report["runs"] = runs
    report["summary"] = summarize(runs)
    report["imports"] = imports
    report["wall_seconds"] = time.perf_counter() - started
    check_fingerprint(report)
    write_json(args.out / "startup.json", report)
    print()
    print(tables(report))
    print(f"\nwrote {args.out / 'startup.json'} ({report['wall_seconds']:.0f} s)")
    return 0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(kind: str, key: str) -> float:
        return median([r[key] for r in runs if r["kind"] == kind])

    by_pair: dict[int, dict[str, float]] = {}
    for r in runs:
        by_pair.setdefault(r["pair"], {})[r["kind"]] = r["wall_seconds"]
    pair_ratios = [p["fedfm"] / p["plain"] for p in by_pair.values()]
    return {
        **{f"{k}_{key}": med(k, key) for k in ("fedfm", "plain") for key in _KEYS},
        # the headline: each ABBA pair ran side by side, so its ratio cancels slow spells
        "ratio_median": median(pair_ratios),
        "pair_ratios": pair_ratios,
        "ratio_of_medians": med("fedfm", "wall_seconds") / med("plain", "wall_seconds"),
        "within_goal": median(pair_ratios) <= GOAL,
    }


def tables(report: dict[str, Any]) -> str:
    s = report["summary"]
    n = len(s["pair_ratios"])
    timing = markdown_table(
        ["process", f"wall s (median of {n})", "CPU s", "peak RSS MB"],
        [
            [name, s[f"{name}_wall_seconds"], s[f"{name}_cpu_seconds"], s[f"{name}_peak_rss_mb"]]
            for name in ("plain", "fedfm")
        ],
    )
    pairs = ", ".join(f"{r:.2f}" for r in s["pair_ratios"])
    verdict = "within" if s["within_goal"] else "over"
    parts = [
        timing,
        f"\nratio fedfm / plain, median of the ABBA pairs: {s['ratio_median']:.2f} "
        f"({verdict} {GOAL}); each pair: {pairs}; ratio of the medians: "
        f"{s['ratio_of_medians']:.2f}",
    ]
    for what, summary in report["imports"].items():
        rows = [[r["module"], r["importer"], r["seconds"]] for r in summary["slowest"]]
        heavy = ", ".join(summary["heavy_imported"]) or "none"
        parts.append(
            f"\n`{what}`: imports {summary['import_seconds_total']:.2f} s in all; "
            f"of {', '.join(HEAVY)}: {heavy}\n"
        )
        parts.append(markdown_table(["module", "imported by", "cumulative s"], rows))
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
