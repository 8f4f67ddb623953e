"""Label skew and the balanced loss: the default job at Dirichlet 0.1 and 0.5, per loss.

The question (issue 17, item 5): why does a federation of clients that each hold one or two
classes collapse to predicting a single class with the defaults, and does the balanced loss
(``client.loss = "balanced"``, the default since) make the same defaults learn?

Each arm is the default job (MiniLM + LoRA on TREC-6, 10 clients, 5 a round, FedAvg,
8 rounds) with ``--set`` overrides, run by ``fedfm run`` in its own process. The script
writes every round's accuracy, macro-F1, number of predicted classes and per-class recall,
with each run's resolved config, to ``benchmarks/results/label_skew.json``, and draws
``docs/label-skew.png``.

Usage:
    .venv/bin/python benchmarks/label_skew.py                # 5 runs, about 3 min each alone
    .venv/bin/python benchmarks/label_skew.py --runs DIR     # reuse finished runs in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import RESULTS, machine_info
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ARMS = {
    "a01-ce": ("data.alpha=0.1", "client.loss=ce"),
    "a01-balanced": ("data.alpha=0.1", "client.loss=balanced"),
    "a01-balanced-lr1e3": ("data.alpha=0.1", "client.loss=balanced", "client.lr=1e-3"),
    "a05-ce": ("client.loss=ce",),
    "a05-balanced": ("client.loss=balanced",),
}
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "label-skew.png"


def run_arm(name: str, overrides: tuple[str, ...], runs: Path) -> Path:
    run_dir = runs / name
    if (run_dir / "summary.json").is_file():
        return run_dir
    sets = [f"--set={o}" for o in (*overrides, f"name={name}", f"output_dir={runs}")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    fedfm = Path(sys.executable).with_name("fedfm")
    subprocess.run([str(fedfm), "run", *sets, "--overwrite"], check=True, env=env)
    return run_dir


def read_arm(run_dir: Path) -> dict:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keep = ("test_accuracy", "test_macro_f1", "test_predicted_classes", "test_class_recall")
    return {
        "config": (run_dir / "config.toml").read_text(),
        "rounds": [{"round": r["round"], **{k: r.get(k) for k in keep}} for r in records],
    }


def draw(results: dict[str, dict], path: Path) -> None:
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, alpha in zip(axes, ("a01", "a05"), strict=True):
        for i, (name, arm) in enumerate(n for n in results.items() if n[0].startswith(alpha)):
            rounds = [r["round"] for r in arm["rounds"]]
            color = f"C{i}"
            ax.plot(
                rounds,
                [r["test_accuracy"] for r in arm["rounds"]],
                "o-",
                color=color,
                label=name[4:],
                markersize=3.5,
            )
            ax.plot(rounds, [r["test_macro_f1"] for r in arm["rounds"]], ":", color=color)
        ax.set_title(
            f"TREC-6, Dirichlet {'0.1' if alpha == 'a01' else '0.5'}: accuracy (solid),"
            " macro-F1 (dotted)",
            fontsize=10,
        )
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy / macro-F1")
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/label-skew"))
    args = parser.parse_args()
    results = {name: read_arm(run_arm(name, o, args.runs)) for name, o in ARMS.items()}
    out = RESULTS / "label_skew.json"
    threads = int(os.environ.get("OMP_NUM_THREADS", "0"))  # 0: torch's default
    info = machine_info(threads)
    out.write_text(json.dumps({"machine": info, "arms": results}, indent=1) + "\n")
    draw(results, FIGURE)
    for name, arm in results.items():
        last = arm["rounds"][-1]
        print(
            f"{name:20s} acc {last['test_accuracy']:.3f}  f1 {last['test_macro_f1']:.3f}  "
            f"classes {last['test_predicted_classes']}"
        )
    print(f"→ {out}, {FIGURE}")


if __name__ == "__main__":
    main()
