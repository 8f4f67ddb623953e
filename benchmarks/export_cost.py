"""What does writing a run's Hugging Face export (``adapter/`` or ``model/``) add to a run?

For MiniLM with LoRA, IA3 and head-only training (a small TREC-6 slice), the script builds
the job once and times the end-of-run export (``fedfm.runtime.run._export``: the peft
adapter folder with the tokenizer, or the full ``model/`` folder, plus ``labels.json``)
``--repeats`` times into a fresh folder each time, and reports the median and the size
written. Writes ``benchmarks/results/export_cost.json``.

    .venv/bin/python benchmarks/export_cost.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import machine_info, markdown_table, median, set_threads, write_json

RESULTS = Path(__file__).parent / "results"
SLICE = [
    "data.max_train_examples=64",
    "data.max_test_examples=32",
    "data.num_clients=2",
    "data.partition=iid",
]
SETTINGS = {"lora": [], "ia3": ["adapter.method=ia3"], "head": ["adapter.method=head"]}


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def measure(overrides: list[str], repeats: int) -> dict[str, object]:
    from fedfm.config import load_config
    from fedfm.runtime.job import build_job
    from fedfm.runtime.run import _export

    cfg = load_config(None, SLICE + overrides)
    job = build_job(cfg)
    seconds, size = [], 0.0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            export = _export(job, job.initial_params, Path(tmp))
            seconds.append(time.perf_counter() - started)
            size = folder_mb(export.folder) if export.folder else 0.0
    return {
        "overrides": SLICE + overrides,
        "kind": export.kind,
        "seconds": seconds,
        "median_seconds": median(seconds),
        "written_mb": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_threads(args.threads)
    report = {
        "machine": machine_info(args.threads),
        "settings": {name: measure(o, args.repeats) for name, o in SETTINGS.items()},
    }
    write_json(args.out / "export_cost.json", report)
    rows = [
        [
            name,
            r["kind"],
            f"{1000 * r['median_seconds']:.0f} ms",
            f"{1000 * max(r['seconds']):.0f} ms",
            f"{r['written_mb']:.1f} MB",
        ]
        for name, r in report["settings"].items()
    ]
    headers = ["adapter.method", "export", "median", "slowest", "written"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
