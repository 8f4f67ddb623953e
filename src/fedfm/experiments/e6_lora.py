"""E6: LoRA-aware aggregation, heterogeneous ranks, personalisation and compressed uploads.

TREC-6 with 20 clients, MiniLM + LoRA, at Dirichlet alpha 0.5 (the issue asks for 0.1, but
within a CPU budget of 10-15 rounds no LoRA arm leaves the majority-class accuracy at 0.1:
see E3's alpha 0.1 arms, ``experiments/adapters/report.md``):

(i) rank 8 for everyone: FedIT (A and B averaged apart) against FLoRA stacking (exact, and
    SVD re-projected) against FFA-LoRA (A frozen), accuracy against cumulative bytes;
(ii) ranks drawn from {2, 4, 8, 16}: HetLoRA (zero padding) against FlexLoRA (SVD of the
    exact mean) against leaving the weaker clients out;
(iii) a local head and FedSA-LoRA's local B against the global model, client by client;
(iv) 8/4/2-bit quantised and top-k sparsified uploads (error feedback): accuracy against
    bytes, on the same frontier as (i).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedfm.experiments.analysis import (
    final,
    fmt,
    md_table,
    plot_frontier,
    plot_panels,
    tail_mean,
)
from fedfm.experiments.base import EXPERIMENTS, QUICK_TEXT, Arm, ArmResult, Experiment
from fedfm.io import atomic_write_bytes

RANK8 = ("adapter.rank=8", "adapter.alpha=16")
RANK16 = ("adapter.rank=16", "adapter.alpha=32", "system.ranks=[2, 4, 8, 16]")

# arm -> (part, overrides)
ARMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fedit": ("aggregation", (*RANK8,)),
    "flora-exact": ("aggregation", (*RANK8, "strategy.name=flora", "strategy.reproject=false")),
    "flora-svd": ("aggregation", (*RANK8, "strategy.name=flora")),
    "ffa": ("aggregation", (*RANK8, "adapter.freeze_a=true")),
    "hetlora": ("ranks", RANK16),
    "flexlora": ("ranks", (*RANK16, "strategy.name=flora")),
    "drop-weak": ("ranks", (*RANK16, "system.min_rank=16")),
    "local-head": ("personal", (*RANK8, 'strategy.personal=["head"]')),
    "fedsa": ("personal", (*RANK8, 'strategy.personal=["lora_B"]')),
    "q8": ("compression", (*RANK8, "compression.method=quantize", "compression.bits=8")),
    "q4": ("compression", (*RANK8, "compression.method=quantize", "compression.bits=4")),
    "q2": ("compression", (*RANK8, "compression.method=quantize", "compression.bits=2")),
    "topk10": ("compression", (*RANK8, "compression.method=topk", "compression.fraction=0.1")),
    "topk1": ("compression", (*RANK8, "compression.method=topk", "compression.fraction=0.01")),
}
LABELS = {
    "fedit": "FedIT (A, B averaged apart)",
    "flora-exact": "FLoRA stacking, merged (exact)",
    "flora-svd": "stacking + SVD to rank 8",
    "ffa": "FFA-LoRA (A frozen)",
    "hetlora": "HetLoRA (zero padding)",
    "flexlora": "FlexLoRA (SVD of the exact mean)",
    "drop-weak": "rank-16 clients only",
    "local-head": "local head",
    "fedsa": "FedSA-LoRA (local B)",
    "q8": "8-bit uploads",
    "q4": "4-bit uploads",
    "q2": "2-bit uploads",
    "topk10": "top-10% uploads",
    "topk1": "top-1% uploads",
}


def _base(quick: bool) -> tuple[str, ...]:
    common = (
        "data.dataset=trec6",
        "model.name=minilm",
        "adapter.method=lora",
        "data.partition=dirichlet",
        "data.alpha=0.5",
        "eval.per_client=true",
    )
    if quick:  # 20 examples a client: one local step, enough for a smoke test
        return (*common, *QUICK_TEXT, "data.max_train_examples=80")
    return (
        *common,
        "rounds=15",
        "data.num_clients=20",
        "strategy.fraction=0.5",
        "data.client_eval_fraction=0.2",
        "data.max_train_examples=2000",
        "data.max_test_examples=600",
    )


def _key(r: ArmResult) -> str:
    return "client_accuracy_mean" if r.labels["part"] == "personal" else "test_accuracy"


def _acc(r: ArmResult) -> float:
    return final(r.records, _key(r))


@EXPERIMENTS.register("lora")
class LoraExperiment(Experiment):
    name = "lora"
    title = "E6: LoRA-aware aggregation, heterogeneous ranks, personalisation, compression"

    def arms(self, quick: bool) -> list[Arm]:
        return [
            Arm(name, (*_base(quick), *overrides), {"part": part})
            for name, (part, overrides) in ARMS.items()
        ]

    def report(
        self,
        results: list[ArmResult],
        measurements: Mapping[str, Any],
        out_dir: Path,
        *,
        quick: bool,
    ) -> str:
        by = {r.arm.name: r for r in results}
        homogeneous = [n for n, (p, _) in ARMS.items() if p in ("aggregation", "compression")]
        plot_frontier(
            [("rank 8: aggregation and compression", {LABELS[n]: [by[n]] for n in homogeneous})],
            out_dir / "frontier.png",
            ncols=1,
        )
        plot_panels(
            [
                (
                    "(i) aggregation, rank 8",
                    {LABELS[n]: [by[n]] for n in ARMS if _part(n) == "aggregation"},
                ),
                (
                    "(ii) ranks from {2, 4, 8, 16}",
                    {LABELS[n]: [by[n]] for n in ARMS if _part(n) == "ranks"},
                ),
                (
                    "(iv) compressed uploads",
                    {LABELS[n]: [by[n]] for n in ("fedit", *_names("compression"))},
                ),
            ],
            "test_accuracy",
            out_dir / "accuracy.png",
            ylabel="test accuracy",
        )
        _personal_scatter(by, out_dir / "personal.png")
        fedit_mb = by["fedit"].summary["total_bytes"] / 1e6
        rows = []
        for name in ARMS:
            r = by[name]
            mb = r.summary["total_bytes"] / 1e6
            up = sum(rec["bytes_up"] for rec in r.records) / 1e6
            rows.append(
                [
                    f"({_roman(r.labels['part'])}) {LABELS[name]}",
                    fmt(_acc(r)),
                    fmt(tail_mean(r.records, _key(r))),
                    fmt(final(r.records, "client_accuracy_mean")),
                    fmt(final(r.records, "client_accuracy_worst10")),
                    f"{up:,.2f}",
                    f"{mb:,.2f}",
                    f"{100 * mb / fedit_mb:.0f}%",
                    str(sum(len(rec["excluded"]) for rec in r.records)),
                ]
            )
        table = md_table(
            [
                "arm",
                "accuracy",
                "mean of last 3 rounds",
                "client mean",
                "client worst 10%",
                "MB up",
                "MB total",
                "% of FedIT bytes",
                "left out",
            ],
            rows,
        )
        cfg = by["fedit"].config
        return f"""
## Setting

MiniLM-L6 + LoRA on TREC-6, {cfg.data.num_clients} clients by Dirichlet(alpha
{cfg.data.alpha}) label skew, {cfg.strategy.fraction:.0%} of them per round, {cfg.rounds}
rounds, {cfg.client.epochs} local epoch, batch {cfg.client.batch_size}, AdamW lr
{cfg.client.lr}. Training pool {cfg.data.max_train_examples or "all"} examples, test set
{cfg.data.max_test_examples or "all"}. One seed ({cfg.seed}). LoRA on query and value,
alpha = 2 r. Every arm is also scored on each client's held-out split (client mean and
worst 10%); "accuracy" is the global test accuracy, except for the personalised arms, which
have no global model (their client mean). (ii) uses a rank-16 model whose clients draw
their rank from {{2, 4, 8, 16}} (seeded); a client of rank r trains and sends its first r
components. "left out" counts client-rounds that did not contribute. Dirichlet 0.5 rather
than the 0.1 the issue names: at 0.1 no LoRA arm of E3 left the majority-class accuracy in
10 rounds (`experiments/adapters/report.md`), so every arm here would tie at chance.

## Accuracy against bytes (rank 8: aggregation and compression)

![accuracy against cumulative bytes](frontier.png)

![accuracy against rounds](accuracy.png)

{table}
## Personalised against global, client by client

![per-client accuracy](personal.png)

{_checks(by)}
"""


def _part(name: str) -> str:
    return ARMS[name][0]


def _names(part: str) -> list[str]:
    return [n for n in ARMS if _part(n) == part]


def _roman(part: str) -> str:
    return {"aggregation": "i", "ranks": "ii", "personal": "iii", "compression": "iv"}[part]


def _per_client(r: ArmResult) -> dict[int, float]:
    last = [rec for rec in r.records if "per_client_accuracy" in rec]
    return {int(c): float(v) for c, v in last[-1]["per_client_accuracy"]} if last else {}


def _personal_scatter(by: Mapping[str, ArmResult], path: Path) -> None:
    """Each client's accuracy with the global FedIT model (x) and with its own tensors (y)."""
    fig = Figure(figsize=(4.8, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    glob = _per_client(by["fedit"])
    for name in _names("personal"):
        own = _per_client(by[name])
        ids = sorted(set(glob) & set(own))
        ax.scatter([glob[i] for i in ids], [own[i] for i in ids], s=18, label=LABELS[name])
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("client accuracy, global model (FedIT)")
    ax.set_ylabel("client accuracy, personalised")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _checks(by: Mapping[str, ArmResult]) -> str:
    acc = {n: _acc(by[n]) for n in ARMS}
    mb = {n: by[n].summary["total_bytes"] / 1e6 for n in ARMS}
    up = {n: sum(rec["bytes_up"] for rec in by[n].records) / 1e6 for n in ARMS}
    glob, head, fedsa = (_per_client(by[n]) for n in ("fedit", "local-head", "fedsa"))
    better = {
        n: sum(own[i] > glob[i] for i in own if i in glob)
        for n, own in (("local-head", head), ("fedsa", fedsa))
    }
    g_mean = final(by["fedit"].records, "client_accuracy_mean")
    g_worst = final(by["fedit"].records, "client_accuracy_worst10")

    def pts(a: float, b: float) -> str:
        return f"{100 * (a - b):+.1f} pts"

    rows = [
        [
            "stacking is exact where FedIT is not, and helps accuracy (FLoRA)",
            f"FLoRA merged {pts(acc['flora-exact'], acc['fedit'])}, stacking + SVD "
            f"{pts(acc['flora-svd'], acc['fedit'])} vs FedIT ({fmt(acc['fedit'])}); merged "
            f"FLoRA downloads {mb['flora-exact'] / mb['fedit']:.2f}x FedIT's total bytes",
            "yes" if max(acc["flora-exact"], acc["flora-svd"]) > acc["fedit"] else "no",
        ],
        [
            "FFA-LoRA matches LoRA at about half the upload bytes",
            f"{pts(acc['ffa'], acc['fedit'])} vs FedIT, {up['ffa'] / up['fedit']:.2f}x its "
            "upload bytes (the head travels whole)",
            "yes" if acc["ffa"] >= acc["fedit"] - 0.02 and up["ffa"] < 0.7 * up["fedit"] else "no",
        ],
        [
            "FlexLoRA beats HetLoRA's zero padding with heterogeneous ranks",
            f"FlexLoRA {fmt(acc['flexlora'])}, HetLoRA {fmt(acc['hetlora'])}",
            "yes" if acc["flexlora"] > acc["hetlora"] else "no",
        ],
        [
            "using the weak clients beats leaving them out",
            f"best of HetLoRA/FlexLoRA {fmt(max(acc['hetlora'], acc['flexlora']))}, rank-16 "
            f"clients only {fmt(acc['drop-weak'])}",
            "yes" if max(acc["hetlora"], acc["flexlora"]) > acc["drop-weak"] else "no",
        ],
        [
            "personalisation helps clients under strong label skew",
            f"client mean / worst 10%: global {fmt(g_mean)} / {fmt(g_worst)}, local head "
            f"{fmt(final(by['local-head'].records, 'client_accuracy_mean'))} / "
            f"{fmt(final(by['local-head'].records, 'client_accuracy_worst10'))}, FedSA "
            f"{fmt(final(by['fedsa'].records, 'client_accuracy_mean'))} / "
            f"{fmt(final(by['fedsa'].records, 'client_accuracy_worst10'))}; clients better "
            f"off: head {better['local-head']}/{len(head)}, FedSA {better['fedsa']}/{len(fedsa)}",
            "yes" if max(acc["local-head"], acc["fedsa"]) > g_mean else "no",
        ],
        [
            "8-bit uploads are free, 4-bit nearly so (QSGD-style quantisation)",
            f"8-bit {pts(acc['q8'], acc['fedit'])}, 4-bit {pts(acc['q4'], acc['fedit'])}, "
            f"2-bit {pts(acc['q2'], acc['fedit'])} at {up['q8'] / up['fedit']:.2f}x / "
            f"{up['q4'] / up['fedit']:.2f}x / {up['q2'] / up['fedit']:.2f}x the upload bytes",
            "yes"
            if acc["q8"] >= acc["fedit"] - 0.01 and acc["q4"] >= acc["fedit"] - 0.02
            else "no",
        ],
        [
            "top-k with error feedback tolerates strong sparsity",
            f"top-10% {pts(acc['topk10'], acc['fedit'])}, top-1% "
            f"{pts(acc['topk1'], acc['fedit'])} at {up['topk10'] / up['fedit']:.2f}x / "
            f"{up['topk1'] / up['fedit']:.2f}x the upload bytes",
            "yes" if acc["topk10"] >= acc["fedit"] - 0.02 else "no",
        ],
    ]
    return "## Against the published shape\n\n" + md_table(
        ["published claim", "our result", "holds?"], rows
    )
