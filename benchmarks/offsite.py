"""What does an offsite-tuning client (``offsite.enabled``) save, and what does it cost in
accuracy?

**Compute and memory** (the default): MiniLM (6 layers) + LoRA (r=8, query/value) on TREC-6,
offsite with ``offsite.bottom = offsite.top = 1``; one worker process per workload
(``offsite.keep`` = 0.5: an emulator of 4 of the 6 layers; 0: of 2). The worker builds two
jobs and times one client's local training (:func:`fedfm.client.fit.fit`, ``client.steps``
steps) in three arms, interleaved ``A B C C B A`` per repeat so that machine noise hits them
alike:

* ``lora_full``: an ordinary fedfm client (no offsite): LoRA in every layer, full model;
* ``adapters_full``: offsite's trainable tensors (the bottom and top layers' LoRA and the
  head) trained on the full model, i.e. the same client without the emulator;
* ``emulator``: the offsite client, the same tensors trained on the emulator.

Reported per arm: seconds per local step (median over repeats), the peak RSS a fit adds
over the RSS at its start (activations, gradients, optimiser state; ``VmHWM`` reset through
``/proc/self/clear_refs``; the model's weights are resident before and not counted), and the
weights (parameters and buffers) the client's model holds, counted from the tensors: in the
simulator the emulator is a view of the one shared model, so its dropped layers stay in
memory; a standalone emulator client (what offsite tuning ships) would hold only the counted
bytes. Ratios are full / emulator.

**Accuracy** (``--accuracy``): a few rounds of the same job on 4 clients, recording the
plug-in (``test_accuracy``: the trained adapters in the full model) and the emulator's
(``emulator_test_accuracy``) after every round, round 0 the untrained model, in three arms:
``keep=1`` (the emulator is the full model: the adapters fine-tuned on the full model, the
paper's reference), ``keep=0.5`` and ``keep=0.5`` distilled on public text (``sms_spam``).

Writes ``benchmarks/results/offsite.json`` (``--accuracy``: ``offsite_accuracy.json``) with
the resolved configs. The machine is shared (2 cores, other processes running): the figures
are contended; ratios of interleaved arms are the robust part.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/offsite.py              # about 2 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/offsite.py --accuracy   # about 25 minutes (busy)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    proc_status_mb,
    run_worker,
    set_threads,
    write_json,
)

SCRIPT = Path(__file__).resolve()
ARMS = ("lora_full", "adapters_full", "emulator")
BASE = [  # the default job otherwise: MiniLM + LoRA (r=8, query/value) on TREC-6, FedAvg
    "data.num_clients=4",
    "data.max_train_examples=800",
    "data.max_test_examples=300",
    "client.batch_size=32",
    "checkpoint.every=0",
]
OFFSITE = ["offsite.enabled=true", "offsite.bottom=1", "offsite.top=1"]
WORKLOADS: dict[str, list[str]] = {"keep0.5": ["offsite.keep=0.5"], "keep0": ["offsite.keep=0"]}
ACCURACY_ARMS: dict[str, list[str]] = {
    "keep1": ["offsite.keep=1.0"],
    "keep0.5": ["offsite.keep=0.5"],
    "keep0.5_distilled": [
        "offsite.keep=0.5",
        "offsite.distill_steps=200",
        "offsite.distill_data=sms_spam",
        "offsite.distill_lr=0.0005",
    ],
}
ACCURACY = [
    "rounds=5",
    "strategy.fraction=1.0",
    "client.steps=25",
    "client.lr=0.005",
    "eval.initial=true",
]


def _fit_memory_start() -> float:
    """Trim the heap glibc keeps, reset the peak RSS, and return the RSS now (MiB)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return proc_status_mb("VmRSS")


def _weights_mib(job: Any, dropped: tuple[int, ...]) -> float:
    """Parameters and buffers of the model, without those of the ``dropped`` layers."""
    from fedfm.models.emulator import transformer_layers

    layers = transformer_layers(job.model)
    skip = {id(t) for i in dropped for t in (*layers[i].parameters(), *layers[i].buffers())}
    tensors = [*job.model.parameters(), *job.model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors if id(t) not in skip) / 2**20


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from fedfm.client.fit import fit
    from fedfm.client.state import ClientState
    from fedfm.config import load_config, to_toml
    from fedfm.runtime.job import build_job

    set_threads(spec["threads"])
    steps = spec["steps"]
    common = [*BASE, f"client.steps={steps}"]
    plain_cfg = load_config(None, common)
    offsite_cfg = load_config(None, [*common, *OFFSITE, *spec["workload"]])
    plain, offsite = build_job(plain_cfg), build_job(offsite_cfg)
    lmap = offsite.feature("offsite").emulator.map
    contexts = {
        "lora_full": (plain, plain.client_context()),
        "adapters_full": (offsite, replace(offsite.client_context(), emulator=None)),
        "emulator": (offsite, offsite.client_context()),
    }
    client = offsite.federation[0]
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    peak: dict[str, list[float]] = {arm: [] for arm in ARMS}

    def one(arm: str, round_: int) -> tuple[float, float]:
        job, ctx = contexts[arm]
        rss = _fit_memory_start()
        started = time.perf_counter()
        upload, _ = fit(ctx, client, job.initial_params, {}, ClientState(), round_)
        elapsed = time.perf_counter() - started
        assert upload.metrics["steps"] == steps
        return elapsed / steps, proc_status_mb("VmHWM") - rss

    for arm in ARMS:  # warm-up: first-call allocations and lazy imports, not recorded
        one(arm, 0)
    for repeat in range(1, spec["repeats"] + 1):
        for arm in (*ARMS, *ARMS[::-1]):
            s, mb = one(arm, repeat)
            seconds[arm].append(s)
            peak[arm].append(mb)
    return {
        "layer_map": lmap.as_record(),
        "configs": {"lora_full": to_toml(plain_cfg), "offsite": to_toml(offsite_cfg)},
        "client_examples": client.num_examples,
        "trainable_params": {
            "lora_full": sum(v.numel() for v in plain.initial_params.values()),
            "offsite": sum(v.numel() for v in offsite.initial_params.values()),
        },
        "weights_mib": {
            "full": _weights_mib(offsite, ()),
            "emulator": _weights_mib(offsite, lmap.dropped),
        },
        "seconds_per_step": seconds,
        "fit_peak_mb": peak,
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    s, p = result["seconds_per_step"], result["fit_peak_mb"]
    emu_s, emu_p = median(s["emulator"]), median(p["emulator"])
    out: dict[str, Any] = {
        "emulator_layers": len(result["layer_map"]["adapter"]) + len(result["layer_map"]["kept"])
    }
    for arm in ARMS:
        out[f"median_seconds_per_step_{arm}"] = median(s[arm])
        out[f"median_fit_peak_mb_{arm}"] = median(p[arm])
    for arm in ("lora_full", "adapters_full"):
        pairs = zip(s[arm], s["emulator"], strict=True)
        out[f"step_speedup_{arm}_over_emulator"] = median([a / b for a, b in pairs])
        out[f"fit_peak_ratio_{arm}_over_emulator"] = median(p[arm]) / emu_p if emu_p > 0 else None
    out["weights_ratio_full_over_emulator"] = (
        result["weights_mib"]["full"] / result["weights_mib"]["emulator"]
    )
    del emu_s
    return out


def accuracy_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from fedfm.config import load_config, to_toml
    from fedfm.runtime.job import build_job
    from fedfm.runtime.simulation import RoundState, initial_record, run_round

    set_threads(spec["threads"])
    cfg = load_config(None, [*BASE, *ACCURACY, *OFFSITE, *spec["arm"]])
    started = time.perf_counter()
    job = build_job(cfg)
    build = time.perf_counter() - started
    state = RoundState(round=0, global_params=job.initial_params)
    records = [initial_record(job, state)]
    records += [run_round(job, state) for _ in range(job.rounds)]
    keys = ("round", "train_loss", "test_accuracy", "emulator_test_accuracy", "seconds")
    return {
        "config": to_toml(cfg),
        "build_seconds": build,
        "offsite": job.feature("offsite").summary(job, records)["offsite"],
        "rounds": [{k: r[k] for k in keys if k in r} for r in records],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="local steps per timed fit")
    parser.add_argument("--repeats", type=int, default=3, help="A B C C B A repeats")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--accuracy", action="store_true", help="the accuracy run instead")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = accuracy_worker(spec) if "arm" in spec else worker(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0
    report: dict[str, Any] = {"machine": machine_info(args.threads), "base": BASE}
    if args.accuracy:
        report["accuracy"] = ACCURACY
        for name, arm in ACCURACY_ARMS.items():
            print(f"accuracy arm {name} ...", flush=True)
            result = run_worker(SCRIPT, {"arm": arm}, threads=args.threads)
            report[name] = result
            rows = [
                [r["round"], r.get("test_accuracy"), r.get("emulator_test_accuracy")]
                for r in result["rounds"]
            ]
            print(markdown_table(["round", "plug-in acc", "emulator acc"], rows), flush=True)
        check_fingerprint(report)
        write_json(args.out / "offsite_accuracy.json", report)
        return 0
    report.update({"steps": args.steps, "repeats": args.repeats})
    rows = []
    for name in args.only or list(WORKLOADS):
        print(f"workload {name} ...", flush=True)
        spec = {"workload": WORKLOADS[name], "steps": args.steps, "repeats": args.repeats}
        result = run_worker(SCRIPT, spec, threads=args.threads)
        result["summary"] = summary = summarise(result)
        report[name] = result
        rows.append(
            [
                name,
                summary["emulator_layers"],
                summary["median_seconds_per_step_lora_full"],
                summary["median_seconds_per_step_adapters_full"],
                summary["median_seconds_per_step_emulator"],
                summary["step_speedup_adapters_full_over_emulator"],
                summary["median_fit_peak_mb_adapters_full"],
                summary["median_fit_peak_mb_emulator"],
                summary["weights_ratio_full_over_emulator"],
            ]
        )
    headers = [
        "workload", "emulator layers", "s/step lora_full", "s/step adapters_full",
        "s/step emulator", "speedup", "fit MB full", "fit MB emulator", "weights ratio",
    ]  # fmt: skip
    print(markdown_table(headers, rows))
    check_fingerprint(report)
    write_json(args.out / "offsite.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
