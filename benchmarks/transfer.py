"""FM-to-small-model transfer on TREC-6, 10 clients, Dirichlet(0.5) (fedfm's default data).

Two questions (issue 22):

1. FedPFT, one shot: accuracy and bytes of a head trained on features sampled from the
   clients' per-class Gaussian mixtures of frozen MiniLM features, against the same head
   trained centrally on the real features (the ceiling) and by FedAvg over the clients
   (plain FL, ``pft.fedavg_rounds`` rounds). One ``fedfm transfer pft`` per arm.
2. Ensemble distillation: a few rounds of a 2-layer random-init BERT (hidden 64, MiniLM's
   tokenizer; ``adapter.method = "full"``) trained by FedAvg, without and with ``[distill]``
   (a fresh MiniLM LoRA + head on the server, public set = 512 unlabelled TREC-6 training
   texts). One ``fedfm run`` per arm. With ``--fm``, also the clients fine-tuning MiniLM
   itself (LoRA, FedAvg) for the same rounds: slow on a small CPU, so off by default.

Every arm runs in its own process with ``OMP_NUM_THREADS=1``; the machine may be shared, so
``seconds`` are indicative only. Results, with each arm's resolved config, go to
``benchmarks/results/transfer.json``.

Usage:
    .venv/bin/python benchmarks/transfer.py [--runs DIR] [--fm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, machine_info

PFT_ARMS = {
    "pft-k2-diag-linear": (),
    "pft-k1-diag-linear": ("pft.components=1",),
    "pft-k1-full-linear": ("pft.components=1", "pft.covariance=full"),
    "pft-k2-diag-mlp": ("pft.head=mlp",),
}
ROUNDS = 3
KD = (
    "distill.enabled=true",
    "distill.public=trec6",
    "distill.public_size=512",
    "distill.steps=20",
    "distill.lr=1e-3",
    "distill.teacher_lr=5e-3",
)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _fedfm(*args: str) -> float:
    fedfm = Path(sys.executable).with_name("fedfm")
    started = time.perf_counter()
    subprocess.run([str(fedfm), *args], check=True, env=_env())
    return time.perf_counter() - started


def pft_arm(name: str, overrides: tuple[str, ...], runs: Path) -> dict[str, Any]:
    sets = [f"--set={o}" for o in (*overrides, f"name={name}", f"output_dir={runs}")]
    wall = _fedfm("transfer", "pft", *sets, "--overwrite")
    run_dir = runs / name
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "summary": summary,
        "wall_seconds": wall,
        "config": (run_dir / "config.toml").read_text(),
    }


def run_arm(name: str, overrides: tuple[str, ...], runs: Path) -> dict[str, Any]:
    sets = [f"--set={o}" for o in (*overrides, f"name={name}", f"output_dir={runs}")]
    wall = _fedfm("run", *sets, "--set=checkpoint.every=0", "--overwrite")
    run_dir = runs / name
    keep = (
        "round", "test_accuracy", "teacher_test_accuracy", "bytes_up", "bytes_down", "cum_bytes",
        "distill_to_client_loss_first", "distill_to_client_loss_last",
        "distill_to_teacher_loss_first", "distill_to_teacher_loss_last", "seconds",
    )  # fmt: skip
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "rounds": [{k: r[k] for k in keep if k in r} for r in records],
        "wall_seconds": wall,
        "config": (run_dir / "config.toml").read_text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench-transfer", help="where the arms' runs go")
    parser.add_argument("--fm", action="store_true", help="also fine-tune MiniLM (slow)")
    args = parser.parse_args()
    runs = Path(args.runs)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from fedfm.transfer.small import small_text_model

    small = small_text_model(layers=2, hidden=64, heads=2, seed=0)
    result: dict[str, Any] = {"machine": machine_info(1), "pft": {}, "distill": {}}
    for name, overrides in PFT_ARMS.items():
        result["pft"][name] = pft_arm(name, overrides, runs)
    base = (f"model.name={small}", "adapter.method=full", f"rounds={ROUNDS}")
    arms = {"small-fedavg": base, "small-fedavg-distill": (*base, *KD)}
    if args.fm:
        arms["minilm-lora-fedavg"] = (f"rounds={ROUNDS}",)
    for name, overrides in arms.items():
        result["distill"][name] = run_arm(name, overrides, runs)
    result["small_model"] = {"folder": small.name, "layers": 2, "hidden": 64, "heads": 2}
    out = RESULTS / "transfer.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    for name, arm in result["pft"].items():
        s = arm["summary"]
        print(name, s["accuracy"], {k: s["bytes"][k] for k in ("pft_up", "fedavg")})
    for name, arm in result["distill"].items():
        last = arm["rounds"][-1]
        print(name, last.get("test_accuracy"), last.get("teacher_test_accuracy"), last["cum_bytes"])


if __name__ == "__main__":
    main()
