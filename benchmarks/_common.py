"""Shared helpers for the benchmarks: workers in fresh subprocesses, memory readings, tables.

Every measurement runs in its own ``python <script> --worker <spec>`` subprocess, so that one
measurement's allocations (and its peak RSS) never leak into another's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def offline_env(threads: int) -> dict[str, str]:
    """The environment of a worker: offline HF, and a fixed number of math threads."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


def run_worker(script: Path, spec: dict[str, Any], *, threads: int) -> dict[str, Any]:
    """Run ``script --worker`` on ``spec`` in a fresh interpreter and return its JSON result."""
    with tempfile.TemporaryDirectory(prefix="fedfm-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        spec = {**spec, "result": str(result_path), "threads": threads}
        proc = subprocess.run(
            [sys.executable, str(script), "--worker", json.dumps(spec)],
            env=offline_env(threads),
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not result_path.is_file():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise RuntimeError(f"worker failed (rc {proc.returncode}) on {spec}")
        return json.loads(result_path.read_text())


def worker_parser(description: str) -> argparse.ArgumentParser:
    """The options every worker-based benchmark takes: ``--threads``, ``--out`` and the
    hidden ``--worker`` (see :func:`serve_worker`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def workload_parser(
    description: str, workloads: Iterable[str], *, rounds: int
) -> argparse.ArgumentParser:
    """:func:`worker_parser` plus ``--only WORKLOAD`` and ``--rounds``."""
    parser = worker_parser(description)
    parser.add_argument("--only", choices=sorted(workloads))
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def serve_worker(args: argparse.Namespace, worker: Callable[[dict[str, Any]], Any]) -> bool:
    """In a ``--worker`` subprocess (:func:`run_worker`): run ``worker`` on its spec, write
    the JSON result where the spec says, and return True; otherwise return False."""
    if not args.worker:
        return False
    spec = json.loads(args.worker)
    Path(spec["result"]).write_text(json.dumps(worker(spec)))
    return True


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``: KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def src_fingerprint() -> str:
    """SHA-256 (16 hex) of every ``src/fedfm`` Python file: which code a result measured.

    Taken at the start and the end of a benchmark; other people edit ``src`` concurrently,
    and a result whose two fingerprints differ mixed two versions of fedfm.
    """
    digest = hashlib.sha256()
    for path in sorted((REPO / "src" / "fedfm").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def check_fingerprint(report: dict[str, Any]) -> bool:
    """Record the end fingerprint; warn (and return False) if ``src`` changed mid-run."""
    report["src_fingerprint_end"] = src_fingerprint()
    same = report["src_fingerprint_end"] == report["machine"]["src_fingerprint"]
    report["src_unchanged_during_run"] = same
    if not same:
        print("WARNING: src/fedfm changed during the run; results mix two versions", flush=True)
    return same


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:  # "" without git or a repository (a copied tree)
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return ""
        return done.stdout.strip()

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": threads,
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "src_uncommitted_changes": bool(git("status", "--porcelain", "--", "src")),
        "src_fingerprint": src_fingerprint(),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
