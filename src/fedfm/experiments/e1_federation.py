"""E1: federation expands the data (FL for FMs).

Each client alone (local-only) against federated (FedAvg, FedAdam) against one model on the
pooled data (centralised, the ceiling), and the untouched FM (zero-shot, round 0), on
naturally non-IID clients: SmolLM2-135M + LoRA on Shakespeare speakers (next-token loss) and
MiniLM + LoRA on sentiment4 with its four review domains as clients (feature shift).
Everything is measured on each client's own held-out split.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.experiments.analysis import final, fmt, md_table, plot_panels
from fedfm.experiments.base import EXPERIMENTS, Arm, ArmResult, Experiment
from fedfm.strategies import STRATEGIES

ARMS: dict[str, tuple[str, ...]] = {
    "local": ("strategy.name=local",),
    "fedavg": ("strategy.name=fedavg",),
    "fedadam": ("strategy.name=fedadam", "strategy.server_lr=1e-2", "strategy.tau=1e-6"),
    "centralized": ("strategy.name=centralized",),
}

# part -> (metric, lower is better?, base overrides, quick overrides)
PARTS: dict[str, tuple[str, bool, tuple[str, ...], tuple[str, ...]]] = {
    "shakespeare": (
        "perplexity",
        True,
        (
            "data.dataset=shakespeare",
            "model.name=smollm2-135m",
            "data.partition=natural",
            "data.num_clients=8",
            "data.min_client_size=60",
            "data.client_eval_fraction=0.25",
            "data.max_length=32",
            "data.max_test_examples=100",
            "client.batch_size=16",
            "client.lr=2e-3",
            "rounds=5",
        ),
        (
            "data.num_clients=2",
            "data.min_client_size=100",
            "data.client_eval_fraction=0.02",  # the biggest speakers: 25% would be ~400 lines
            "data.max_length=16",
            "data.max_test_examples=16",
            "client.steps=2",
            "client.batch_size=8",
            "rounds=1",
        ),
    ),
    "sentiment4": (
        "accuracy",
        False,
        (
            "data.dataset=sentiment4",
            "model.name=minilm",
            "data.partition=natural",
            "data.num_clients=0",
            "data.client_eval_fraction=0.2",
            "data.max_train_examples=2400",
            "data.max_test_examples=600",
            "rounds=6",
        ),
        (
            "data.max_train_examples=120",
            "data.max_test_examples=40",
            "data.max_length=32",  # reviews run long; the smoke test needs no more
            "rounds=2",
        ),
    ),
}
COMMON = ("strategy.fraction=1.0", "eval.per_client=true", "eval.initial=true")


@EXPERIMENTS.register("federation")
class FederationExperiment(Experiment):
    name = "federation"
    title = "E1: federation beats going alone, and approaches pooling the data"

    def arms(self, quick: bool) -> list[Arm]:
        arms = []
        for part, (_, _, base, quick_base) in PARTS.items():
            for arm, overrides in ARMS.items():
                extra = (*quick_base, "checkpoint.every=0") if quick else ()
                arms.append(
                    Arm(
                        f"{part}-{arm}",
                        (*base, *COMMON, *overrides, *extra),
                        {"part": part, "arm": arm},
                    )
                )
        return arms

    def report(
        self,
        results: list[ArmResult],
        measurements: Mapping[str, Any],
        out_dir: Path,
        *,
        quick: bool,
    ) -> str:
        sections = []
        for part, (metric, lower, _, _) in PARTS.items():
            runs = {r.labels["arm"]: r for r in results if r.labels["part"] == part}
            if runs:
                sections.append(_part(part, metric, lower, runs, out_dir))
        return "\n".join(sections)


def _part(part: str, metric: str, lower: bool, runs: Mapping[str, ArmResult], out: Path) -> str:
    mean_key, worst_key = f"client_{metric}_mean", f"client_{metric}_worst10"
    lines = {arm: [r] for arm, r in runs.items()}
    png = f"{part}.png"
    plot_panels(
        [(f"{part}: mean over clients (own held-out split)", lines)],
        mean_key,
        out / png,
        ylabel=f"client {metric}",
        logy=lower,
        ncols=1,
    )
    plot_panels(
        [(f"{part}: worst 10% of clients", lines)],
        worst_key,
        out / f"{part}-worst.png",
        ylabel=f"worst-10% client {metric}",
        logy=lower,
        ncols=1,
    )
    first = next(iter(runs.values()))
    zero = next((rec for rec in first.records if rec["round"] == 0), {})
    rows = [
        [
            "zero-shot (round 0)",
            fmt(zero.get(mean_key)),
            fmt(zero.get(worst_key)),
            fmt(zero.get(f"test_{metric}")),
            "0",
        ]
    ]
    for arm, r in runs.items():
        communicates = STRATEGIES.get(r.config.strategy.name).communicates
        rows.append(
            [
                arm,
                fmt(final(r.records, mean_key)),
                fmt(final(r.records, worst_key)),
                fmt(final(r.records, f"test_{metric}")),
                f"{r.summary['total_bytes'] / 1e6:,.1f}" if communicates else "0 (nothing travels)",
            ]
        )
    table = md_table(
        ["arm", f"client {metric} (mean)", "worst 10%", f"global test {metric}", "MB sent"], rows
    )
    checks = _checks(metric, lower, runs, mean_key)
    cfg = first.config
    return f"""
## {part}: {cfg.model.name} + {cfg.adapter.method} (r={cfg.adapter.rank})

{cfg.data.dataset}, {first.summary["num_clients"]} natural clients,
{cfg.data.client_eval_fraction:.0%} of each client's data held out for its evaluation; every client
takes part in every round; {cfg.rounds} rounds of {cfg.client.epochs} local epoch(s), batch
{cfg.client.batch_size}, AdamW lr {cfg.client.lr:g}, max {cfg.data.max_length} tokens.
FedAdam: server lr 1e-2, tau 1e-6 (not tuned). Local-only and centralised train the same
number of epochs over the same examples; centralised sees them pooled.

![{part}: client {metric}]({png})

![{part}: worst-10% client {metric}]({part}-worst.png)

{table}
{checks}
"""


def _checks(metric: str, lower: bool, runs: Mapping[str, ArmResult], key: str) -> str:
    value = {arm: final(r.records, key) for arm, r in runs.items()}
    sign = -1.0 if lower else 1.0
    rows = []
    for fed in ("fedavg", "fedadam"):
        if fed in value and "local" in value:
            better = sign * (value[fed] - value["local"]) > 0
            rows.append(
                [
                    f"{fed} beats local-only",
                    f"{fmt(value[fed])} vs {fmt(value['local'])}",
                    "yes" if better else "no",
                ]
            )
        if fed in value and "local" in value and "centralized" in value:
            span = value["local"] - value["centralized"]
            closed = (value["local"] - value[fed]) / span if span else float("nan")
            rows.append(
                [
                    f"{fed} approaches centralised",
                    f"closes {100 * closed:.0f}% of the local → centralised gap "
                    f"({fmt(value[fed])} vs {fmt(value['centralized'])})",
                    "yes" if closed >= 0.5 else "no",
                ]
            )
    return "### Against the expected shape\n\n" + md_table(
        ["claim", f"client {metric}", "holds?"], rows
    )
