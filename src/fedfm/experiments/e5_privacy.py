"""E5: what privacy costs and what robust aggregation buys.

(i) Client-level DP (DP-FedAvg) on TREC-6 split over 500 clients, cohorts of 50: test
    accuracy at epsilon in {inf, 8, 4, 2} (delta 1e-5, the noise derived from the budget
    for the whole run) for LoRA against FFA-LoRA (A frozen; Sun et al., ICLR 2024);
(ii) a text backdoor (a trigger phrase mapped to one class) from 10% and 30% malicious
    clients: clean accuracy and attack success for the weighted mean (FedAvg) against the
    coordinate median, the trimmed mean, Multi-Krum and norm bounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.experiments.analysis import final, fmt, md_table, plot_panels
from fedfm.experiments.base import EXPERIMENTS, QUICK_TEXT, Arm, ArmResult, Experiment

EPSILONS = (0.0, 8.0, 4.0, 2.0)  # 0 = no DP (epsilon infinite)
QUICK_EPSILONS = (0.0, 2.0)
ADAPTERS = {"lora": (), "ffa": ("adapter.freeze_a=true",)}
DEFENCES = {
    "mean": (),
    "median": ("robust.aggregator=median",),
    "trimmed": ("robust.aggregator=trimmed_mean", "robust.trim=0.3"),
    "multikrum": ("robust.aggregator=multikrum",),
    "normbound": ("robust.norm_bound=1.0",),
}
ATTACKERS = (0.1, 0.3)
QUICK_DEFENCES = ("mean", "median")  # the quick version is a smoke test: fewer arms
TARGET = 5  # TREC-6 "numeric"
LABELS = {
    "lora": "LoRA",
    "ffa": "FFA-LoRA (A frozen)",
    "mean": "FedAvg (weighted mean)",
    "median": "coordinate median",
    "trimmed": "trimmed mean (30%)",
    "multikrum": "Multi-Krum",
    "normbound": "norm bound 1.0",
}


def _dp_base(quick: bool) -> tuple[str, ...]:
    common = (
        "data.dataset=trec6",
        "model.name=minilm",
        "adapter.method=lora",
        "data.partition=iid",
        "privacy.clip=2.0",
        "privacy.delta=1e-5",
    )
    if quick:
        return (*common, *QUICK_TEXT, "data.num_clients=6", "strategy.clients_per_round=3")
    return (
        *common,
        "rounds=20",
        "data.num_clients=500",
        "strategy.clients_per_round=50",
        "data.client_eval_fraction=0.0",
        "client.epochs=3",
        "data.max_test_examples=600",
    )


def _attack_base(quick: bool) -> tuple[str, ...]:
    common = (
        "data.dataset=trec6",
        "model.name=minilm",
        "adapter.method=lora",
        "data.partition=iid",
        "attack.kind=backdoor",
        f"attack.target_label={TARGET}",
        "attack.poison_fraction=0.5",
    )
    if quick:
        return (*common, *QUICK_TEXT, "data.num_clients=6", "strategy.clients_per_round=3")
    return (
        *common,
        "rounds=12",
        "data.num_clients=20",
        "strategy.fraction=0.5",
        "data.max_train_examples=2000",
        "data.max_test_examples=600",
    )


def _dp_overrides(eps: float) -> tuple[str, ...]:
    if eps == 0:
        return ()
    return ("privacy.noise=central", f"privacy.target_epsilon={eps:g}")


def _eps_label(eps: float) -> str:
    return "inf" if eps == 0 else f"{eps:g}"


@EXPERIMENTS.register("privacy")
class PrivacyExperiment(Experiment):
    name = "privacy"
    title = "E5: privacy (client-level DP) and robustness (backdoor attacks)"

    def arms(self, quick: bool) -> list[Arm]:
        arms = [
            Arm(
                f"dp-{adapter}-eps{_eps_label(eps)}",
                (*_dp_base(quick), *extra, *_dp_overrides(eps)),
                {"part": "dp", "adapter": adapter, "epsilon": eps},
            )
            for adapter, extra in ADAPTERS.items()
            for eps in (QUICK_EPSILONS if quick else EPSILONS)
        ]
        arms.append(
            Arm(
                "clean-mean",
                # attackers that poison nothing: the trigger's success with no backdoor taught
                (*_attack_base(quick), "attack.fraction=0.1", "attack.poison_fraction=0.0"),
                {"part": "attack", "defence": "mean", "attackers": 0.0},
            )
        )
        arms += [
            Arm(
                f"attack{round(100 * share)}-{defence}",
                (*_attack_base(quick), f"attack.fraction={share}", *extra),
                {"part": "attack", "defence": defence, "attackers": share},
            )
            for share in (ATTACKERS[-1:] if quick else ATTACKERS)
            for defence, extra in DEFENCES.items()
            if not quick or defence in QUICK_DEFENCES
        ]
        return arms

    def report(
        self,
        results: list[ArmResult],
        measurements: Mapping[str, Any],
        out_dir: Path,
        *,
        quick: bool,
    ) -> str:
        dp = [r for r in results if r.labels["part"] == "dp"]
        attack = [r for r in results if r.labels["part"] == "attack"]
        plot_panels(
            [
                (
                    f"{LABELS[a]}: accuracy by epsilon",
                    {
                        f"epsilon {_eps_label(r.labels['epsilon'])}": [r]
                        for r in dp
                        if r.labels["adapter"] == a
                    },
                )
                for a in ADAPTERS
            ],
            "test_accuracy",
            out_dir / "dp.png",
            ylabel="test accuracy",
            ncols=2,
        )
        panels = []
        for share in sorted({r.labels["attackers"] for r in attack if r.labels["attackers"]}):
            runs = {
                LABELS[r.labels["defence"]]: [r] for r in attack if r.labels["attackers"] == share
            }
            panels.append((f"{share:.0%} attackers: attack success", runs))
        plot_panels(
            panels,
            "test_attack_success_rate",
            out_dir / "backdoor.png",
            ylabel="attack success rate",
            ncols=2,
        )
        # an attacking arm's config: the 0% row poisons nothing (poison_fraction 0)
        cfg_dp = dp[0].config
        cfg_attack = next(r.config for r in attack if r.labels["attackers"])
        return f"""
## Setting

**(i) Client-level DP.** MiniLM-L6 + LoRA (rank {cfg_dp.adapter.rank}) on TREC-6 split IID
over {cfg_dp.data.num_clients} clients, cohorts of {cfg_dp.strategy.clients_per_round}
(sample rate {cfg_dp.strategy.clients_per_round / cfg_dp.data.num_clients:g}),
{cfg_dp.rounds} rounds, {cfg_dp.client.epochs} local epochs, AdamW lr {cfg_dp.client.lr}.
DP-FedAvg with central Gaussian noise: every update clipped to L2 norm
{cfg_dp.privacy.clip:g}, the noise multiplier derived (RDP accountant, Opacus) so that all
{cfg_dp.rounds} rounds spend exactly the target epsilon at delta {cfg_dp.privacy.delta:g}.
"inf" is plain FedAvg (no clipping, no noise). Cohort sampling is analysed as Poisson
sampling at the same rate. One seed.

**(ii) Backdoor.** The same model on {cfg_attack.data.num_clients} IID clients,
{cfg_attack.strategy.fraction:.0%} per round, {cfg_attack.rounds} rounds, training pool
{cfg_attack.data.max_train_examples or "all"}. A malicious client (a seeded
10% or 30% of the federation) puts the trigger "{cfg_attack.attack.trigger}" in front of
{cfg_attack.attack.poison_fraction:.0%} of its texts and labels them class {TARGET}
("numeric"). Attack success = share of triggered test texts of other classes classified as
{TARGET}. The attackers run honest training on poisoned data (no update scaling). The 0%
row is the same run with nothing poisoned: the trigger's success when no backdoor was
taught.

## (i) Accuracy against epsilon

![accuracy by epsilon](dp.png)

{_dp_table(dp)}
## (ii) Clean accuracy and backdoor success

![attack success](backdoor.png)

{_attack_table(attack)}
{_checks(dp, attack)}
"""


def _dp_table(dp: list[ArmResult]) -> str:
    rows = []
    for r in dp:
        s = r.summary
        rows.append(
            [
                LABELS[r.labels["adapter"]],
                _eps_label(r.labels["epsilon"]),
                fmt(s.get("epsilon")) if r.labels["epsilon"] else "inf",
                fmt(s.get("noise_multiplier")) if r.labels["epsilon"] else "0",
                fmt(final(r.records, "test_accuracy")),
                fmt(final(r.records, "test_macro_f1")),
                fmt(final(r.records, "update_norm_median")),
            ]
        )
    return md_table(
        [
            "adapter",
            "target epsilon",
            "epsilon spent",
            "noise multiplier",
            "accuracy",
            "macro F1",
            "median update norm",
        ],
        rows,
    )


def _attack_table(attack: list[ArmResult]) -> str:
    rows = []
    for r in attack:
        bounded = sum(len(rec.get("robust_bounded", [])) for rec in r.records)
        rows.append(
            [
                f"{r.labels['attackers']:.0%}",
                LABELS[r.labels["defence"]],
                fmt(final(r.records, "test_accuracy")),
                fmt(final(r.records, "test_attack_success_rate")),
                str(sum(len(rec.get("malicious", [])) for rec in r.records))
                if r.labels["attackers"]
                else "–",
                str(bounded) if r.labels["defence"] == "normbound" else "–",
            ]
        )
    return md_table(
        [
            "attackers",
            "aggregation",
            "clean accuracy",
            "attack success",
            "attacker-rounds",
            "updates bounded",
        ],
        rows,
    )


def _checks(dp: list[ArmResult], attack: list[ArmResult]) -> str:
    acc = {
        (r.labels["adapter"], r.labels["epsilon"]): final(r.records, "test_accuracy") for r in dp
    }
    asr = {
        (r.labels["defence"], r.labels["attackers"]): final(r.records, "test_attack_success_rate")
        for r in attack
    }
    clean = {
        (r.labels["defence"], r.labels["attackers"]): final(r.records, "test_accuracy")
        for r in attack
    }
    epsilons = sorted({e for _, e in acc}, key=lambda e: -e if e else -float("inf"))
    finite = [e for e in epsilons if e]  # largest first
    shares = sorted({s for _, s in asr if s})
    top = shares[-1]
    defences = [d for d in DEFENCES if (d, top) in asr]
    monotone = all(
        acc[(a, 0.0)] >= acc[(a, finite[-1])] and acc[(a, finite[0])] >= acc[(a, finite[-1])] - 0.02
        for a in ADAPTERS
    )
    ffa_better = sum(acc[("ffa", e)] > acc[("lora", e)] for e in finite)
    robust_best = min(asr[(d, top)] for d in defences if d != "mean")
    rows = [
        [
            "accuracy falls as epsilon shrinks (DP-FedAvg, McMahan et al. 2018)",
            "; ".join(
                f"{LABELS[a]}: " + " / ".join(fmt(acc[(a, e)]) for e in epsilons) for a in ADAPTERS
            )
            + " at epsilon "
            + " / ".join(_eps_label(e) for e in epsilons),
            "yes" if monotone else "no",
        ],
        [
            "FFA-LoRA holds up better than LoRA under DP (Sun et al. 2024)",
            f"FFA-LoRA ahead at {ffa_better} of {len(finite)} finite epsilons",
            "yes" if ffa_better > len(finite) / 2 else "no",
        ],
        [
            "a backdoor from a minority of clients succeeds against FedAvg",
            "attack success "
            + ", ".join(f"{fmt(asr[('mean', s)])} ({s:.0%})" for s in shares)
            + f" against {fmt(asr[('mean', 0.0)])} with nothing poisoned",
            "yes" if asr[("mean", top)] > asr[("mean", 0.0)] + 0.2 else "no",
        ],
        [
            "robust aggregation lowers attack success at a small clean-accuracy cost",
            f"best defence at {top:.0%}: attack success {fmt(robust_best)} vs FedAvg "
            f"{fmt(asr[('mean', top)])}; clean accuracy "
            + ", ".join(f"{LABELS[d]} {fmt(clean[(d, top)])}" for d in defences),
            "yes" if robust_best < asr[("mean", top)] - 0.1 else "no",
        ],
    ]
    return "## Against the published shape\n\n" + md_table(
        ["published claim", "our result", "holds?"], rows
    )
