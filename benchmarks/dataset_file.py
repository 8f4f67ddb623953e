"""A million-row dataset file: time and peak memory to read, partition, summarise and tokenise.

Writes a Parquet file of ``--rows`` short reviews (``text``, ``label`` of 8 classes,
``group`` of 100 owners) to a temporary folder, then measures in fresh subprocesses:

* ``strings``: the same three columns as Python lists (``to_pylist``): the memory a
  ``list[str]`` dataset would need, the yardstick;
* ``data cold`` / ``data cached``: what ``fedfm data stats`` and the data half of a run do on
  the file (``load_data``: Arrow conversion and the seeded 20% test split;
  ``build_federation``: the natural partition by ``group``; ``summarize`` + ``plot_stats``;
  ``encode``: MiniLM's tokenizer over train and test), first with an empty fedfm cache and
  then again with the cache the first run left;
* ``job cold`` / ``job cached``: ``build_job`` of the whole config (the above plus loading
  MiniLM and its adapter): the time to the first round, first run and cached run; and the
  same job on a 1,000-row file (cached), whose peak is what the model costs without data.

Memory is the peak resident set (``ru_maxrss``) minus the resident set after the imports,
the tokenizer and a warm-up read of a 2-row CSV (which loads ``datasets``' readers, about
200 MB whatever the file), so the figure is what the data costs, not the libraries; the
warm-up's own cost is reported beside it. Resident memory includes pages of the
memory-mapped Arrow and token files that were touched (file-backed, reclaimable). Results
and the resolved config go to ``benchmarks/results/dataset_file.json``.

    .venv/bin/python benchmarks/dataset_file.py [--rows N] [--out DIR] [--no-job]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    peak_rss_mb,
    proc_status_mb,
    run_worker,
    write_json,
)

LABELS = ("billing", "delivery", "food", "hygiene", "noise", "price", "service", "staff")
WORDS = ("really", "quite", "very", "not", "so", "rather", "too", "truly")
GROUPS = 100


def config_overrides(path: Path) -> list[str]:
    """The run this benchmark measures: the file split naturally by its owner column."""
    return [
        f"data.dataset={path}",
        "data.group_column=group",
        "data.partition=natural",
        "data.num_clients=0",
        "data.max_length=32",
        "adapter.method=lora",
        "rounds=1",
    ]


def write_parquet(path: Path, rows: int) -> None:
    """``rows`` short reviews: about 30 characters of text, one of 8 labels, one of 100
    groups; written a million rows at a time with pyarrow (no Python strings kept)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    label = rng.integers(0, len(LABELS), rows)
    word = pa.array(WORDS).take(pa.array(rng.integers(0, len(WORDS), rows)))
    topic = pa.array(LABELS).take(pa.array(label))
    number = pc.cast(pa.array(np.arange(rows)), pa.string())
    text = pc.binary_join_element_wise("the", word, "bad", topic, "case", number, " ")
    group = pc.binary_join_element_wise(
        "owner", pc.cast(pa.array(rng.integers(0, GROUPS, rows)), pa.string()), "-"
    )
    table = pa.table({"text": text, "label": topic, "group": group})
    pq.write_table(table, path, row_group_size=250_000)


def _rss() -> float:
    return proc_status_mb("VmRSS")


def warm_up(tmp: str) -> float:
    """Open a 2-row CSV once, so ``datasets``' lazily imported readers (about 200 MB, the
    same for any file) are loaded before the baseline; return the MB this added."""
    from fedfm.data.source import open_table

    before = _rss()
    tiny = Path(tmp) / "warm-up.csv"
    tiny.write_text("text,label\na,x\nb,y\n")
    open_table(tiny, what="warm-up")
    return _rss() - before


def worker_strings(spec: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    table = pq.read_table(spec["path"])
    columns = {name: table.column(name) for name in ("text", "label", "group")}
    del table
    base = _rss()
    start = time.perf_counter()
    lists = {name: column.to_pylist() for name, column in columns.items()}
    seconds = time.perf_counter() - start
    grown = _rss() - base
    sizes = {
        name: (sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values)) / 2**20
        for name, values in lists.items()
    }  # to_pylist makes one str object per row, none shared
    return {
        "rows": len(lists["text"]),
        "to_pylist_seconds": seconds,
        "rss_growth_mb": grown,
        "getsizeof_mb": sum(sizes.values()),
        "getsizeof_mb_per_column": sizes,
    }


def worker_data(spec: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    import datasets  # noqa: F401 - a library's own memory is not the data's
    from transformers import AutoTokenizer

    from fedfm.config import load_config
    from fedfm.data.batching import encode
    from fedfm.data.federation import build_federation
    from fedfm.data.load import load_data
    from fedfm.data.stats import plot_stats, stats_summary, summarize
    from fedfm.resources.models import minilm_dir

    cfg = load_config(None, config_overrides(Path(spec["path"])))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    library_mb = warm_up(spec["tmp"])
    imports_s = time.perf_counter() - start
    base = _rss()
    anon, mapped = proc_status_mb("RssAnon"), proc_status_mb("RssFile")
    peak_before = peak_rss_mb()
    stages: dict[str, float] = {}
    start = time.perf_counter()
    dataset = load_data(cfg.data)
    stages["load_and_split_s"] = time.perf_counter() - start
    mark = time.perf_counter()
    federation = build_federation(dataset.train, cfg.data, seed=cfg.seed)
    stages["partition_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    stats = summarize(
        [c.train for c in federation.clients],
        dataset.train.labels,
        dataset.label_names,
        client_names=[c.name for c in federation.clients],
    )
    plot_stats(stats, Path(spec["tmp"]) / "stats.png")
    stages["stats_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    train = encode(dataset.train, tokenizer, max_length=cfg.data.max_length)
    test = encode(dataset.test, tokenizer, max_length=cfg.data.max_length)
    stages["tokenise_s"] = time.perf_counter() - mark
    stages["total_s"] = time.perf_counter() - start
    lengths = train.lengths()
    return {
        "imports_and_tokenizer_s": imports_s,
        "library_warm_up_mb": library_mb,
        **stages,
        "rows_train": len(dataset.train),
        "rows_test": len(dataset.test),
        "clients": len(federation),
        "summary": stats_summary(stats),
        "mean_tokens": float(lengths.mean()),
        "test_tokens": int(test.lengths().sum()),
        "rss_after_imports_mb": base,
        "peak_rss_mb": peak_rss_mb(),
        "peak_growth_mb": peak_rss_mb() - base,
        "peak_before_mb": peak_before,
        "rss_end_mb": _rss(),
        # what stays resident after the stages: process memory vs pages of mapped files
        "anon_growth_end_mb": proc_status_mb("RssAnon") - anon,
        "file_backed_growth_end_mb": proc_status_mb("RssFile") - mapped,
    }


def worker_job(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets  # noqa: F401 - imported before the baseline, like the data worker's
    import torch  # noqa: F401

    from fedfm.config import load_config
    from fedfm.runtime.job import build_job

    cfg = load_config(None, config_overrides(Path(spec["path"])))
    library_mb = warm_up(spec["tmp"])
    base = _rss()
    anon, mapped = proc_status_mb("RssAnon"), proc_status_mb("RssFile")
    start = time.perf_counter()
    job = build_job(cfg)
    seconds = time.perf_counter() - start
    return {
        "build_job_s": seconds,
        "library_warm_up_mb": library_mb,
        "clients": len(job.federation),
        "train_rows": len(job.train),
        "rss_after_imports_mb": base,
        "peak_rss_mb": peak_rss_mb(),
        "peak_growth_mb": peak_rss_mb() - base,
        "anon_growth_end_mb": proc_status_mb("RssAnon") - anon,
        "file_backed_growth_end_mb": proc_status_mb("RssFile") - mapped,
    }


WORKERS = {"strings": worker_strings, "data": worker_data, "job": worker_job}


def _worker(spec_json: str) -> None:
    import os

    spec = json.loads(spec_json)
    os.environ["FEDFM_CACHE"] = spec["cache"]
    result = WORKERS[spec["kind"]](spec)
    Path(spec["result"]).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-job", action="store_true", help="skip the build_job workers")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    script = Path(__file__).resolve()
    report: dict[str, Any] = {"machine": machine_info(threads=1), "rows": args.rows}
    with tempfile.TemporaryDirectory(prefix="fedfm-dataset-file-") as tmp:
        path = Path(tmp) / "reviews.parquet"
        start = time.perf_counter()
        write_parquet(path, args.rows)
        report["write_parquet_s"] = time.perf_counter() - start
        report["file_mb"] = path.stat().st_size / 2**20
        from fedfm.config import load_config, to_dict

        report["config"] = to_dict(load_config(None, config_overrides(path)))
        report["config_overrides"] = config_overrides(Path("<tmp>/reviews.parquet"))

        small = Path(tmp) / "small.parquet"
        write_parquet(small, 1000)

        def run(kind: str, cache: str, data: Path = path) -> dict[str, Any]:
            spec = {"kind": kind, "path": str(data), "cache": cache, "tmp": tmp}
            print(f"{kind} ({Path(cache).name}) ...", flush=True)
            result = run_worker(script, spec, threads=1)
            print(f"  {result}", flush=True)
            return result

        report["strings"] = run("strings", str(Path(tmp) / "cache-strings"))
        data_cache = str(Path(tmp) / "cache-data")
        report["data_cold"] = run("data", data_cache)
        report["data_cached"] = run("data", data_cache)
        if not args.no_job:
            shutil.rmtree(data_cache, ignore_errors=True)
            job_cache = str(Path(tmp) / "cache-job")
            report["job_cold"] = run("job", job_cache)
            report["job_cached"] = run("job", job_cache)
            # the same job on 1,000 rows: what the model and libraries cost whatever the data
            report["job_1000_rows_cold"] = run("job", job_cache, small)
            report["job_1000_rows_cached"] = run("job", job_cache, small)
    check_fingerprint(report)
    strings = report["strings"]["rss_growth_mb"]
    rows = [
        [name, r.get("total_s", r.get("build_job_s")), r["peak_growth_mb"], r["peak_rss_mb"]]
        for name, r in report.items()
        if name.startswith(("data_", "job_"))
    ]
    table = markdown_table(["run", "seconds", "peak growth MB", "peak RSS MB"], rows)
    report["table"] = table
    print(table)
    print(f"same data as Python lists: {strings:.0f} MB resident growth")
    out = args.out / ("dataset_file.json" if args.rows == 1_000_000 else "quick/dataset_file.json")
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
