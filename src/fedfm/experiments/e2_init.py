"""E2: the FM as a starting point (Nguyen et al., ICLR 2023, "Where to Begin?").

The same architecture (MiniLM-L6, all weights trained) from its pre-trained weights and
from a random init, federated over Dirichlet(0.1), Dirichlet(0.5) and IID splits; FedAvg
and FedAdam; 1 and 5 local epochs; seeds on the headline arms. Also the top Hessian
eigenvalue of the loss at initialisation and the client-update cosine per round (drift).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.experiments.analysis import (
    final,
    fmt,
    group_by,
    md_table,
    mean_std,
    plot_panels,
    rounds_to_target,
)
from fedfm.experiments.base import EXPERIMENTS, Arm, ArmResult, Experiment

INITS = {
    "pretrained": ("model.pretrained=true", "client.lr=5e-5"),
    "random": ("model.pretrained=false", "client.lr=5e-4"),
}
SPLITS = {
    "a0.1": ("data.partition=dirichlet", "data.alpha=0.1"),
    "a0.5": ("data.partition=dirichlet", "data.alpha=0.5"),
    "iid": ("data.partition=iid",),
}


def _base(dataset: str, quick: bool) -> tuple[str, ...]:
    common = (
        f"data.dataset={dataset}",
        "model.name=minilm",
        "adapter.method=full",
        "checkpoint.every=0" if quick else "checkpoint.every=1",
    )
    if quick:
        return (
            *common,
            "rounds=2",
            "data.num_clients=4",
            "data.max_train_examples=80",  # 20 a client: one full fine-tuning step an epoch
            "data.max_test_examples=40",
        )
    return (
        *common,
        "rounds=10",
        "data.num_clients=20",
        "strategy.fraction=0.5",
        "data.max_train_examples=2000",
        "data.max_test_examples=600",
    )


def _datasets(quick: bool) -> tuple[str, ...]:
    """The quick version (a CI smoke test) runs TREC-6 alone."""
    return ("trec6",) if quick else ("trec6", "sentiment4")


def _fedadam(init: str) -> tuple[str, ...]:
    # server step ~ 10x the client lr, tau small enough that Adam's scaling is active
    lr = {"pretrained": "5e-4", "random": "5e-3"}[init]
    return ("strategy.name=fedadam", f"strategy.server_lr={lr}", "strategy.tau=1e-6")


@EXPERIMENTS.register("init")
class InitExperiment(Experiment):
    name = "init"
    title = "E2: a pre-trained start against a random one (Where to Begin?)"

    def arms(self, quick: bool) -> list[Arm]:
        seeds = (0,) if quick else (0, 1, 2)
        arms = []
        for init, init_o in INITS.items():
            labels = {"dataset": "trec6", "init": init, "strategy": "fedavg", "epochs": 1}
            for split, split_o in SPLITS.items():
                # 3 seeds at the two ends (headline); the middle alpha once, to fit 2 hours
                # (the quick version: the two ends only)
                for seed in seeds if split != "a0.5" else seeds[: 0 if quick else 1]:
                    arms.append(
                        Arm(
                            f"trec6-{init}-{split}-fedavg-e1-s{seed}",
                            (*_base("trec6", quick), *init_o, *split_o, f"seed={seed}"),
                            {**labels, "split": split, "seed": seed},
                        )
                    )
            arms.append(
                Arm(
                    f"trec6-{init}-a0.1-fedadam-e1-s0",
                    (*_base("trec6", quick), *init_o, *SPLITS["a0.1"], *_fedadam(init)),
                    {**labels, "split": "a0.1", "strategy": "fedadam", "seed": 0},
                )
            )
            arms.append(
                Arm(
                    f"trec6-{init}-a0.1-fedavg-e5-s0",
                    (*_base("trec6", quick), *init_o, *SPLITS["a0.1"], "client.epochs=5"),
                    {**labels, "split": "a0.1", "epochs": 5, "seed": 0},
                )
            )
            for split in () if quick else ("a0.1", "iid"):  # quick: TREC-6 only
                # two classes over 20 clients: no Dir(0.1) draw gives every client 8 examples
                tiny = ("data.min_client_size=1",) if split == "a0.1" else ()
                arms.append(
                    Arm(
                        f"sentiment4-{init}-{split}-fedavg-e1-s0",
                        (*_base("sentiment4", quick), *init_o, *SPLITS[split], *tiny),
                        {**labels, "dataset": "sentiment4", "split": split, "seed": 0},
                    )
                )
        for dataset in _datasets(quick):  # the ceiling that sets the target accuracy
            arms.append(
                Arm(
                    f"{dataset}-pretrained-centralized",
                    (*_base(dataset, quick), *INITS["pretrained"], "strategy.name=centralized"),
                    {
                        "dataset": dataset,
                        "init": "pretrained",
                        "strategy": "centralized",
                        "split": "pooled",
                        "epochs": 1,
                        "seed": 0,
                    },
                )
            )
        return arms

    def measure(self, quick: bool, work_dir: Path) -> dict[str, Any]:
        return {
            f"{dataset}-{init}": top_eigenvalue([*_base(dataset, quick), *INITS[init]], quick=quick)
            for dataset in _datasets(quick)
            for init in INITS
        }

    def report(
        self,
        results: list[ArmResult],
        measurements: Mapping[str, Any],
        out_dir: Path,
        *,
        quick: bool,
    ) -> str:
        return _report(results, measurements, out_dir)


def top_eigenvalue(overrides: list[str], *, quick: bool) -> dict[str, float]:
    """Top Hessian eigenvalue of the loss at init on a fixed batch of the pooled train set."""
    import numpy as np
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fedfm.analysis.hessian import top_hessian_eigenvalue
    from fedfm.config import load_config
    from fedfm.data.batching import batches
    from fedfm.runtime.job import build_job

    job = build_job(load_config(None, overrides))
    size = 16 if quick else 128
    idx = np.random.default_rng(0).choice(len(job.train), size=size, replace=False)
    batch = next(iter(batches(job.train, np.sort(idx), batch_size=size, causal_lm=False)))
    with sdpa_kernel(SDPBackend.MATH):  # the math kernel has a double backward
        value = top_hessian_eigenvalue(
            job.model, lambda: job.task.loss(job.model, batch), iters=5 if quick else 30
        )
    return {"top_eigenvalue": value, "batch_size": size}


def _acc(r: ArmResult) -> float:
    return final(r.records, "test_accuracy")


def _report(results: list[ArmResult], measurements: Mapping[str, Any], out_dir: Path) -> str:
    def key(r: ArmResult) -> tuple[Any, ...]:
        return (
            r.labels["dataset"],
            r.labels["init"],
            r.labels["split"],
            r.labels["strategy"],
            r.labels["epochs"],
        )

    groups = group_by(results, key)
    datasets = sorted({r.labels["dataset"] for r in results}, key=lambda d: d != "trec6")
    central = {d: _acc(groups[d, "pretrained", "pooled", "centralized", 1][0]) for d in datasets}
    target = {d: 0.8 * central[d] for d in datasets}

    panels = []
    for d in datasets:
        for split in SPLITS:
            lines = {
                init: groups[g] for init in INITS if (g := (d, init, split, "fedavg", 1)) in groups
            }
            if lines:
                panels.append((f"{d}, {split}, FedAvg, 1 epoch", lines))
    plot_panels(panels, "test_accuracy", out_dir / "accuracy.png", ylabel="test accuracy")
    variants = []
    for init in INITS:
        lines = {}
        for strategy, epochs in (("fedavg", 1), ("fedadam", 1), ("fedavg", 5)):
            g = ("trec6", init, "a0.1", strategy, epochs)
            if g in groups:
                lines[f"{strategy}, {epochs} epoch(s)"] = groups[g]
        panels_v = (f"trec6, a0.1, {init} init", lines)
        variants.append(panels_v)
    plot_panels(
        variants, "test_accuracy", out_dir / "variants.png", ylabel="test accuracy", ncols=2
    )
    drift = [
        (
            f"{d}, {split}",
            {init: groups[g] for init in INITS if (g := (d, init, split, "fedavg", 1)) in groups},
        )
        for d in datasets
        for split in ("a0.1", "iid")
        if (d, "pretrained", split, "fedavg", 1) in groups
    ]
    plot_panels(
        drift,
        "update_cosine",
        out_dir / "drift.png",
        ylabel="mean pairwise cosine of client updates",
        ncols=2,
    )

    rows = []
    for (d, init, split, strategy, epochs), runs in groups.items():
        if strategy == "centralized":
            rows.append(
                [
                    d,
                    init,
                    split,
                    strategy,
                    epochs,
                    len(runs),
                    fmt([_acc(r) for r in runs]),
                    "–",
                    "–",
                ]
            )
            continue
        reach = [rounds_to_target(r.records, "test_accuracy", target[d]) for r in runs]
        reached = [x for x in reach if x is not None]
        reach_txt = f"{fmt([float(x) for x in reached], 1)} ({len(reached)}/{len(runs)} reached)"
        cos = [
            mean_std([x for x in (rec.get("update_cosine") for rec in r.records) if x is not None])[
                0
            ]
            for r in runs
        ]
        rows.append(
            [
                d,
                init,
                split,
                strategy,
                epochs,
                len(runs),
                fmt([_acc(r) for r in runs]),
                reach_txt,
                fmt(cos),
            ]
        )
    table = md_table(
        [
            "dataset",
            "init",
            "split",
            "strategy",
            "local epochs",
            "seeds",
            "final accuracy",
            "rounds to 80% of centralised",
            "mean update cosine",
        ],
        rows,
    )

    def mean_acc(*g: Any) -> float:
        return mean_std([_acc(r) for r in groups.get(g, [])])[0]

    gap_rows: list[list[Any]] = []
    helps = []
    for d in datasets:
        for split in SPLITS:
            p, r = (
                mean_acc(d, "pretrained", split, "fedavg", 1),
                mean_acc(d, "random", split, "fedavg", 1),
            )
            if p == p and r == r:
                helps.append((d, split, p - r))
        for init in INITS:
            iid = mean_acc(d, init, "iid", "fedavg", 1)
            for split in ("a0.5", "a0.1"):
                skew = mean_acc(d, init, split, "fedavg", 1)
                if iid == iid and skew == skew:
                    gap_rows.append([d, init, split, f"{100 * (iid - skew):.1f}"])
    gaps = {(row[0], row[1], row[2]): float(row[3]) for row in gap_rows}
    shrink = [
        (d, s)
        for (d, i, s) in gaps
        if i == "pretrained"
        and (d, "random", s) in gaps
        and gaps[d, "pretrained", s] < gaps[d, "random", s]
    ]
    n_gap = sum(1 for (d, i, s) in gaps if i == "pretrained" and (d, "random", s) in gaps)
    e1, e5 = (
        mean_acc("trec6", "pretrained", "a0.1", "fedavg", 1),
        mean_acc("trec6", "pretrained", "a0.1", "fedavg", 5),
    )
    fa = mean_acc("trec6", "pretrained", "a0.1", "fedadam", 1)
    fa0 = mean_acc("trec6", "pretrained", "a0.1", "fedavg", 1)
    eig_rows, ratios = [], []
    for d in datasets:
        pe, re_ = measurements.get(f"{d}-pretrained", {}), measurements.get(f"{d}-random", {})
        if pe and re_:
            ratio = (
                re_["top_eigenvalue"] / pe["top_eigenvalue"]
                if pe["top_eigenvalue"]
                else float("nan")
            )
            ratios.append(ratio)
            eig_rows.append(
                [d, f"{pe['top_eigenvalue']:.3g}", f"{re_['top_eigenvalue']:.3g}", f"{ratio:.2f}x"]
            )
    checks = [
        [
            "pre-training helps at every alpha",
            "; ".join(f"{d} {s}: {100 * v:+.1f} pts" for d, s, v in helps),
            "yes" if helps and all(v > 0 for _, _, v in helps) else "no",
        ],
        [
            "the IID/non-IID gap shrinks a lot with a pre-trained start",
            f"gap smaller for pre-trained in {len(shrink)} of {n_gap} (dataset, alpha) pairs",
            "yes" if n_gap and len(shrink) == n_gap else "no",
        ],
        [
            "5 local epochs do not hurt a pre-trained start",
            f"trec6 a0.1: 1 epoch {fmt(e1)}, 5 epochs {fmt(e5)}",
            "yes" if e5 >= e1 - 0.01 else "no",
        ],
        [
            "FedAdam is at least as good as FedAvg from a pre-trained start",
            f"trec6 a0.1: FedAdam {fmt(fa)}, FedAvg {fmt(fa0)} (seed 0 arm vs mean over seeds)",
            "yes" if fa >= fa0 - 0.01 else "no",
        ],
        [
            "top Hessian eigenvalue 1.2x-13.5x lower at a pre-trained init",
            ", ".join(f"{x:.2f}x" for x in ratios),
            "yes" if ratios and all(x > 1.2 for x in ratios) else "no",
        ],
    ]
    cfg = results[0].config
    return f"""
## Setting

MiniLM-L6 with **all weights trained** (22.7M params) from its pre-trained weights or from
a random init of the same architecture. {cfg.data.num_clients} clients, {cfg.strategy.fraction:.0%}
per round, {cfg.rounds} rounds, batch {cfg.client.batch_size}, AdamW at lr 5e-5 (pre-trained)
and 5e-4 (random). Training pool {cfg.data.max_train_examples or "all"} examples, test set
{cfg.data.max_test_examples or "all"}. FedAdam: server lr 10x the client lr, tau 1e-6.
Target accuracy: 80% of the centralised pre-trained accuracy
({", ".join(f"{d} {fmt(central[d])} → {fmt(target[d])}" for d in datasets)}).
Seeds 0, 1 and 2 for the FedAvg, 1-epoch TREC-6 arms at Dirichlet 0.1 and IID (the two
ends of the skew range); one seed (0) for every other arm, to fit the grid into about two
hours on two CPU cores. Bands: min-max over seeds. sentiment4 has two classes: at
Dirichlet 0.1 over 20 clients no draw gives every client 8 examples, so that arm allows
clients of one example (`data.min_client_size=1`).

![accuracy against rounds](accuracy.png)

![FedAdam and 5 local epochs](variants.png)

![client drift](drift.png)

{table}
### IID minus non-IID accuracy (points)

{md_table(["dataset", "init", "non-IID split", "IID - non-IID (pts)"], gap_rows)}
### Top Hessian eigenvalue of the loss at initialisation

Power iteration with Hessian-vector products on all trainable params, one fixed batch of
the pooled training set.

{md_table(["dataset", "pre-trained", "random", "random / pre-trained"], eig_rows)}
## Against the published shape

{md_table(["published claim", "our result", "holds?"], checks)}
"""
