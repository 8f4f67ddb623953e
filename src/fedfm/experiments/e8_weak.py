"""E8: sharing the compute. Weak clients, asynchronous rounds, and an FM that teaches small
client models.

MiniLM + LoRA on TREC-6 (and a subset on sentiment4), ten clients, half of them weak. The
same half is weak in every arm: ``sample_profiles`` draws each client's profile index from
one seeded stream, so ``system.layers = [6, 2]``, ``system.ranks = [8, 4]`` and
``system.speeds = [1.0, 0.25]`` mark the same clients (index 1: weak). Arms:

(i) ``full``: every client trains LoRA on the whole backbone (the reference: the weak pay
    for all of it); ``drop-weak``: the weak are left out (``system.min_rank``);
(ii) ``top``: the weak train only the top 2 of MiniLM's 6 layers (``system.layers``);
(iii) ``offsite`` and ``offsite-distilled``: every client trains the bottom and top layers'
    adapters on an emulator that keeps half of the middle layers, plain or distilled on
    public text (``[offsite]``, docs/offsite.md);
(iv) ``split``: every client computes only the embeddings and layer 0; the server runs the
    rest on the activations it is sent (``[split]``, docs/split.md);
(v) ``small`` and ``small-distill``: the clients own a 2-layer BERT (2M params) trained by
    FedAvg, plain or taught every round by the ``full`` arm's FM on public text, both
    directions (``[distill]``); and FedPFT, one shot: per-class Gaussian mixtures of frozen
    FM features (``fedfm transfer pft``, a measurement: not a round-based run);
(vi) ``sync``, ``sync-deadline`` and ``fedbuff``: synchronous FedAvg under the skewed speed
    profile, with a deadline that drops the slow, and FedBuff (``[asynchronous]``), all
    on the same simulated clock.

Client compute and memory are probed in a fresh process for a weak client of each kind
(:func:`fedfm.experiments.probe.probe_client_cost`).

The shapes to compare with: offsite tuning's plug-in close to full fine-tuning when the
emulator is distilled (Xiao et al. 2023); FedBuff reaching a target accuracy in less
simulated time than synchronous rounds with stragglers (Nguyen et al. 2022); FedDF's
ensemble distillation improving the small model over plain FedAvg (Lin et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedfm.config import SystemConfig, load_config
from fedfm.experiments.analysis import final, fmt, md_table, series
from fedfm.experiments.base import EXPERIMENTS, QUICK_TEXT, Arm, ArmResult, Experiment
from fedfm.experiments.probe import probe_client_cost
from fedfm.experiments.runner import RUNS

WEAK_SPEEDS = ("system.speeds=[1.0, 0.25]",)  # index 1 of every profile list is the weak one
PUBLIC = {"trec6": "sentiment4", "sentiment4": "trec6"}  # public text: another dataset's
DATASETS = ("trec6", "sentiment4")

# arm -> (part, label, what the weak client holds, overrides); `full` first: `small-distill`
# takes its FM as the teacher
WEAK_ARMS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "full": ("weak", "whole backbone, LoRA", "FM + adapter", ()),
    "drop-weak": (
        "weak",
        "weak clients left out",
        "FM + adapter (trained without it)",
        ("system.ranks=[8, 4]", "system.min_rank=8"),
    ),
    "top": ("weak", "weak train the top 2 layers", "FM + adapter", ("system.layers=[6, 2]",)),
    "offsite": (
        "weak",
        "offsite tuning, emulator of 4 layers",
        "emulator + adapter",
        ("offsite.enabled=true", "offsite.bottom=1", "offsite.top=1", "offsite.keep=0.5"),
    ),
    "offsite-distilled": (
        "weak",
        "offsite tuning, distilled emulator",
        "emulator + adapter",
        (
            "offsite.enabled=true",
            "offsite.bottom=1",
            "offsite.top=1",
            "offsite.keep=0.5",
        ),
    ),
    "split": (
        "weak",
        "split at layer 1 (client: embeddings + layer 0)",
        "layer 0 + adapter (inference through the server)",
        ("split.enabled=true", "split.layers=1"),
    ),
    "small": ("weak", "own 2-layer BERT, FedAvg", "small model", ()),
    "small-distill": (
        "weak",
        "own 2-layer BERT, FedAvg + FM distillation (public: sentiment4 texts)",
        "small model",
        (
            "distill.enabled=true",
            "distill.directions=both",
            f"distill.teacher_adapter={RUNS}/trec6-full",
        ),
    ),
    "small-distill-own": (
        "weak",
        "own 2-layer BERT, FedAvg + FM distillation (public: TREC-6 texts)",
        "small model",
        (
            "distill.enabled=true",
            "distill.directions=both",
            f"distill.teacher_adapter={RUNS}/trec6-full",
        ),
    ),
    "small-taught": (
        "weak",
        "own 2-layer BERT, FedAvg + FM distillation to the clients only (public: TREC-6 texts)",
        "small model",
        (
            "distill.enabled=true",
            "distill.directions=to_client",
            f"distill.teacher_adapter={RUNS}/trec6-full",
        ),
    ),
}
ASYNC_ARMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sync": ("synchronous FedAvg", ()),
    "sync-deadline": (
        "synchronous, deadline drops the slow",
        ("system.deadline=4", "system.late=drop"),
    ),
    "fedbuff": (
        "FedBuff, buffer 3 of 5 in flight",
        (
            "asynchronous.enabled=true",
            "asynchronous.concurrency=5",
            "asynchronous.buffer=3",
            "asynchronous.staleness=polynomial",
            "asynchronous.staleness_a=0.5",
        ),
    ),
}
SECOND = ("full", "drop-weak", "top", "offsite")  # the arms also run on sentiment4


# the seed whose profile draw makes exactly half of 10 clients weak (clients 1, 2, 4, 5, 7;
# seed 0 would make 7 of them weak): it seeds the partition and everything else too
SEED = 5


def _base(dataset: str, quick: bool) -> tuple[str, ...]:
    common = (
        f"seed={SEED}",
        f"data.dataset={dataset}",
        "model.name=minilm",
        "adapter.method=lora",
        "eval.per_client=true",
        "data.client_eval_fraction=0.2",
    )
    if quick:  # a smoke test: one round on 20 rows a client
        return (
            *common,
            *QUICK_TEXT,
            "rounds=1",
            "data.max_train_examples=80",
            "data.max_test_examples=24",
        )
    return (
        *common,
        "rounds=8",
        "data.num_clients=10",
        "data.alpha=1.0",
        "strategy.clients_per_round=5",
        "data.max_train_examples=2000",
        "data.max_test_examples=400",
        "eval.every=2",
        "checkpoint.every=1",
    )


def _small() -> tuple[str, ...]:
    """The clients' own small model: a 2-layer BERT over MiniLM's tokenizer, trained whole."""
    from fedfm.transfer.small import small_text_model

    return (f"model.name={small_text_model()}", "adapter.method=full", "client.lr=5e-3")


def _weak_overrides(name: str, dataset: str, quick: bool) -> tuple[str, ...]:
    overrides = WEAK_ARMS[name][3] if quick else ("client.epochs=2", *WEAK_ARMS[name][3])
    public = PUBLIC[dataset]
    if name == "offsite-distilled":
        steps = 4 if quick else 150
        overrides = (*overrides, f"offsite.distill_steps={steps}", f"offsite.distill_data={public}")
    if name.startswith("small"):  # a small model from scratch: more local passes, cheap
        overrides = (*overrides, *_small(), *(() if quick else ("client.epochs=3",)))
    if name in ("small-distill-own", "small-taught"):  # in-domain public text, no labels
        public = dataset
    if name.startswith(("small-distill", "small-taught")):
        size = 16 if quick else 512
        steps = 2 if quick else 20
        overrides = (
            *overrides,
            f"distill.public={public}",
            f"distill.public_size={size}",
            f"distill.steps={steps}",
        )
    return overrides


def _async_base(quick: bool) -> tuple[str, ...]:
    """Every client does 4 local steps: 4 time units at speed 1, 16 at speed 0.25."""
    return (*_base("trec6", quick), *WEAK_SPEEDS, "client.steps=2" if quick else "client.steps=4")


# rounds of each clock arm, so that all three run about as long in simulated time
ASYNC_ROUNDS = {"sync": 6, "sync-deadline": 24, "fedbuff": 24}
ASYNC_QUICK_ROUNDS = {"sync": 1, "sync-deadline": 2, "fedbuff": 2}


@EXPERIMENTS.register("weak")
class WeakExperiment(Experiment):
    name = "weak"
    title = "E8: sharing the compute with weak clients"

    def arms(self, quick: bool) -> list[Arm]:
        arms = []
        for dataset in DATASETS:
            names = WEAK_ARMS if dataset == "trec6" else SECOND
            if quick and dataset != "trec6":
                continue
            for name in names:
                part, label, holds, _ = WEAK_ARMS[name]
                overrides = (*_base(dataset, quick), *_weak_overrides(name, dataset, quick))
                labels = {"part": part, "dataset": dataset, "arm": name, "label": label}
                arms.append(Arm(f"{dataset}-{name}", overrides, {**labels, "holds": holds}))
        rounds = ASYNC_QUICK_ROUNDS if quick else ASYNC_ROUNDS
        for name, (label, overrides) in ASYNC_ARMS.items():
            if quick and name == "fedbuff":  # 4 clients: 2 in flight, a step every arrival
                overrides = (*overrides, "asynchronous.concurrency=2", "asynchronous.buffer=1")
            arms.append(
                Arm(
                    f"clock-{name}",
                    (
                        *_async_base(quick),
                        *overrides,
                        f"rounds={rounds[name]}",
                        "eval.every=1",  # the curve against the clock
                        "eval.per_client=false",
                    ),
                    {"part": "clock", "dataset": "trec6", "arm": name, "label": label},
                )
            )
        return arms

    def measure(self, quick: bool, work_dir: Path) -> dict[str, Any]:
        """A weak client's compute and memory for each kind of arm (a fresh process each),
        and FedPFT's one-shot run on TREC-6."""
        from fedfm.transfer.run_pft import run_pft

        base = list(_base("trec6", quick))
        kinds: dict[str, tuple[list[str], dict[str, int]]] = {
            "full": ([], {}),
            "top": ([], {"layers": 2}),
            "offsite": (list(WEAK_ARMS["offsite"][3]), {}),
            "split": (list(WEAK_ARMS["split"][3]), {}),
            "small": (list(_small()), {}),
        }
        if quick:  # a probe is a process: two show that the probe runs
            kinds = {k: kinds[k] for k in ("full", "split")}
        probes = {k: probe_client_cost([*base, *o], **work) for k, (o, work) in kinds.items()}
        cfg = load_config(None, [*base, f"output_dir={work_dir}", "name=trec6-pft"])
        pft_dir = work_dir / "trec6-pft"
        pft_dir.mkdir(parents=True, exist_ok=True)
        pft = run_pft(cfg, pft_dir)
        return {"probes": probes, "pft": pft}

    def report(
        self,
        results: list[ArmResult],
        measurements: Mapping[str, Any],
        out_dir: Path,
        *,
        quick: bool,
    ) -> str:
        by = {r.arm.name: r for r in results}
        probes = measurements.get("probes", {})
        sections = []
        for dataset in DATASETS:
            rows = [
                _weak_row(by[f"{dataset}-{n}"], probes) for n in WEAK_ARMS if f"{dataset}-{n}" in by
            ]
            if rows:
                sections.append(f"### {dataset}\n\n{md_table(WEAK_HEADER, rows)}")
        pft = measurements.get("pft", {})
        clock = {n: by[f"clock-{n}"] for n in ASYNC_ARMS if f"clock-{n}" in by}
        target = _target(clock)
        _plot_clock(clock, out_dir / "clock.png")
        cfg = by["trec6-full"].config
        weak = sorted(_weak_clients(cfg.data.num_clients, cfg.seed))
        return f"""
## Setting

MiniLM (`minilm`, 6 layers) with LoRA rank {cfg.adapter.rank} on query/value and a
classifier head; {cfg.data.max_train_examples} training rows of each dataset over
{cfg.data.num_clients} clients (Dirichlet {cfg.data.alpha}), {_cohort(cfg)} a round,
{cfg.rounds} rounds; local epochs: {cfg.client.epochs} (3 for the small model), batch
{cfg.client.batch_size}, AdamW lr {cfg.client.lr}; {cfg.data.max_test_examples} test rows;
each client holds out {cfg.data.client_eval_fraction:.0%} of its rows. One seed
({cfg.seed}: the first whose profile draw makes exactly half of ten clients weak). The
weak clients are {", ".join(map(str, weak))} in every arm (the profile lists put the weak
choice second, so the seeded draws agree).

The columns: **test acc, server model** is the global model on the test set (for offsite
tuning, the adapters plugged into the full FM; for the small-model arms, the small model;
for split, the whole model, which only the server and the client together run); **test
acc, what a weak client holds** is what a weak client can run alone (the emulator for
offsite tuning; nothing for split, which needs the server at inference); **weak / strong
clients** is the mean accuracy of the global model on each group's own held-out rows;
**weak client s / MiB** is one weak client's local training (one pass over its rows, warm)
and the rise of its peak memory, probed in a fresh process (for split, the seconds of the
client's halves only; the memory includes the server's half, which ran in the same
process); **weak client KB up** is what it sends in one round (its update, plus its
activations for split); **MB total** is everything sent, down and up, over the run.

## (i)-(v) What a weak client can do

{chr(10).join(sections)}
{_pft_section(pft)}
## (vi) Synchronous against asynchronous rounds

Every client does {by["clock-sync"].config.client.steps} local steps a round; a strong
client takes that many time units, a weak one (speed 0.25) four times as long.

"Simulated time to target" is the first evaluated time at {fmt(target)} test accuracy,
90% of the best any of the three reaches.

{md_table(CLOCK_HEADER, [_clock_row(n, r, target) for n, r in clock.items()])}
![test accuracy against simulated time](clock.png)

## Against the published shapes

{_shapes(by, pft)}
"""


WEAK_HEADER = [
    "arm",
    "weak client holds",
    "test acc, server model",
    "test acc, what a weak client holds",
    "weak clients",
    "strong clients",
    "weak client s",
    "weak client MiB",
    "weak client KB up",
    "MB total",
]
PROBE_OF = {
    "full": "full",
    "drop-weak": None,
    "top": "top",
    "offsite": "offsite",
    "offsite-distilled": "offsite",
    "split": "split",
    "small": "small",
    "small-distill": "small",
    "small-distill-own": "small",
    "small-taught": "small",
}
CLOCK_HEADER = [
    "arm",
    "rounds",
    "simulated time",
    "final test acc",
    "best test acc",
    "simulated time to target",
    "updates applied",
    "updates dropped",
    "mean staleness",
]


def _weak_clients(num_clients: int, seed: int) -> set[int]:
    from fedfm.runtime.profiles import sample_profiles

    profiles = sample_profiles(num_clients, SystemConfig(speeds=(1.0, 0.25)), seed=seed)
    return {i for i, p in enumerate(profiles) if p.speed < 1.0}


def _cohort(cfg: Any) -> str:
    return str(cfg.strategy.clients_per_round or f"{cfg.strategy.fraction:.0%}")


def _group_means(r: ArmResult) -> tuple[float, float]:
    """Mean per-client accuracy of the weak and the strong group (last evaluation)."""
    evaluated = [rec for rec in r.records if "per_client_accuracy" in rec]
    if not evaluated:
        return float("nan"), float("nan")
    weak = _weak_clients(r.config.data.num_clients, r.config.seed)
    scores = dict((int(c), v) for c, v in evaluated[-1]["per_client_accuracy"])
    groups = [[v for c, v in scores.items() if (c in weak) == w] for w in (True, False)]
    means = [float(np.mean(g)) if g else float("nan") for g in groups]
    return means[0], means[1]


def _weak_row(r: ArmResult, probes: Mapping[str, Any]) -> list[str]:
    arm = r.labels["arm"]
    server = final(r.records, "test_accuracy")
    holds = {
        "offsite": final(r.records, "emulator_test_accuracy"),
        "offsite-distilled": final(r.records, "emulator_test_accuracy"),
        "split": float("nan"),
        "drop-weak": server,
    }.get(arm, server)
    weak, strong = _group_means(r)
    probe = probes.get(PROBE_OF[arm] or "", {})
    seconds = fmt(probe.get("client_seconds"), 2) if probe else "–"
    mib = f"{probe['client_peak_bytes'] / 2**20:,.0f}" if probe else "–"
    up = f"{probe['bytes_up'] / 1e3:,.0f}" if probe else "–"
    if arm == "drop-weak":
        seconds, mib, up = "0 (left out)", "0", "0"
    return [
        r.labels["label"],
        r.labels["holds"],
        fmt(server),
        fmt(holds) if arm != "split" else "– (needs the server)",
        fmt(weak),
        fmt(strong),
        seconds,
        mib,
        up,
        f"{r.summary['total_bytes'] / 1e6:,.1f}",
    ]


def _pft_section(pft: Mapping[str, Any]) -> str:
    if not pft:
        return ""
    acc, sent = pft["accuracy"], pft["bytes"]
    rows = [
        ["FedPFT (one shot)", fmt(acc["pft"]), f"{sent['pft_up'] / 1e3:,.0f}"],
        ["FedAvg of the same head", fmt(acc["fedavg"]), f"{sent['fedavg'] / 1e3:,.0f}"],
        ["centralised head (ceiling)", fmt(acc["centralized"]), "–"],
    ]
    return f"""
### FedPFT on TREC-6 (frozen FM features, one shot)

Each client embeds its rows with the frozen MiniLM (inference only: no backward) and sends
per-class Gaussian mixtures; the server trains a linear head on samples from them. Same
clients and test rows as above.

{md_table(["arm", "test acc", "KB sent"], rows)}"""


def _clock(r: ArmResult) -> tuple[list[float], list[float]]:
    return series(r.records, "test_accuracy", x="sim_clock")


def _target(clock: Mapping[str, ArmResult]) -> float:
    """90% of the best accuracy any clock arm reaches."""
    best = max((max(_clock(r)[1], default=0.0) for r in clock.values()), default=0.0)
    return 0.9 * best


def _time_to(r: ArmResult, target: float) -> float:
    for x, y in zip(*_clock(r), strict=True):
        if y >= target:
            return x
    return float("nan")


def _clock_row(name: str, r: ArmResult, target: float) -> list[str]:
    xs, ys = _clock(r)
    applied = sum(len(rec.get("staleness", [])) for rec in r.records if rec.get("round"))
    if name != "fedbuff":
        applied = sum(
            len(rec["cohort"]) - len(rec.get("excluded", [])) for rec in r.records if rec["round"]
        )
    dropped = sum(len(rec.get("excluded", [])) for rec in r.records if rec.get("round"))
    staleness = [s for rec in r.records for s in rec.get("staleness", [])]
    return [
        ASYNC_ARMS[name][0],
        str(r.config.rounds),
        fmt(xs[-1] if xs else float("nan"), 0),
        fmt(ys[-1] if ys else float("nan")),
        fmt(max(ys, default=float("nan"))),
        fmt(_time_to(r, target), 0),
        str(applied),
        str(dropped),
        fmt(float(np.mean(staleness)) if staleness else 0.0, 2),
    ]


def _plot_clock(clock: Mapping[str, ArmResult], path: Path) -> None:
    from fedfm.report.plots import plot_against_clock

    plot_against_clock(
        {ASYNC_ARMS[n][0]: r.records for n, r in clock.items()},
        path,
        title="TREC-6, half the clients at speed 0.25",
    )


def _shapes(by: Mapping[str, ArmResult], pft: Mapping[str, Any]) -> str:
    acc = {n: final(r.records, "test_accuracy") for n, r in by.items()}
    emu = {n: final(r.records, "emulator_test_accuracy") for n, r in by.items()}
    lines = [
        f"- Offsite tuning on TREC-6: plug-in {fmt(acc['trec6-offsite'])} (emulator "
        f"{fmt(emu['trec6-offsite'])}); with a distilled emulator plug-in "
        f"{fmt(acc['trec6-offsite-distilled'])} (emulator "
        f"{fmt(emu['trec6-offsite-distilled'])}); full fine-tuning of the adapters "
        f"{fmt(acc['trec6-full'])}. Xiao et al. report the plug-in close to full "
        "fine-tuning once the emulator is distilled; "
        + _closer(acc["trec6-offsite"], acc["trec6-offsite-distilled"], acc["trec6-full"]),
        f"- Weak clients training only the top 2 layers: {fmt(acc['trec6-top'])} against "
        f"{fmt(acc['trec6-full'])} with every client on the whole backbone and "
        f"{fmt(acc['trec6-drop-weak'])} with the weak left out.",
        f"- Split at layer 1: {fmt(acc['trec6-split'])} (the same training as `full`, up to "
        "float rounding: the split moves compute, not the result).",
        _small_shape(by, acc),
    ]
    if pft:
        lines.append(
            f"- FedPFT, one shot: {fmt(pft['accuracy']['pft'])} against FedAvg of the same "
            f"head {fmt(pft['accuracy']['fedavg'])}, with "
            f"{pft['bytes']['fedavg'] / max(pft['bytes']['pft_up'], 1):.0f}x fewer bytes."
        )
    clock = {n: by[f"clock-{n}"] for n in ASYNC_ARMS if f"clock-{n}" in by}
    if len(clock) == len(ASYNC_ARMS):
        target = _target(clock)
        times = {n: _time_to(r, target) for n, r in clock.items()}
        never = {n: math.inf if math.isnan(t) else t for n, t in times.items()}  # not reached
        faster = never["fedbuff"] < never["sync"]
        than_deadline = "before" if never["fedbuff"] < never["sync-deadline"] else "after"
        lines.append(
            f"- Simulated time to {fmt(target)} test accuracy: synchronous "
            f"{fmt(times['sync'], 0)}, with a deadline {fmt(times['sync-deadline'], 0)}, "
            f"FedBuff {fmt(times['fedbuff'], 0)} (– = not reached). Nguyen et al. report "
            "FedBuff reaching a target in less time than synchronous rounds with "
            f"stragglers; {'so it does here' if faster else 'it does not here'}, and it "
            f"gets there {than_deadline} the synchronous rounds that drop the slow clients."
        )
    return "\n".join(lines)


def _small_shape(by: Mapping[str, ArmResult], acc: Mapping[str, float]) -> str:
    """The small model with and without the FM's teaching, and what teaching back did to
    the FM (it starts from the ``full`` arm's adapter)."""
    arms = {
        "trec6-small-distill": "both ways on sentiment4's texts",
        "trec6-small-distill-own": "both ways on TREC-6's",
        "trec6-small-taught": "to the clients only, on TREC-6's",
    }
    teacher = {n: final(by[n].records, "teacher_test_accuracy") for n in arms if n in by}
    taught = "; ".join(f"{arms[n]} {fmt(acc[n])}" for n in arms if n in by)
    back = ", ".join(
        f"{fmt(teacher[n])}" for n in ("trec6-small-distill", "trec6-small-distill-own")
    )
    helped = [arms[n] for n in teacher if acc[n] > acc["trec6-small"]]
    verdict = f"it does here {' and '.join(helped)}" if helped else "it does not here"
    return (
        f"- The small model: {fmt(acc['trec6-small'])} by FedAvg alone; taught by the FM "
        f"every round: {taught}. Taught back by the small models' ensemble, the FM ends at "
        f"{back} (it started from the `full` arm's {fmt(acc['trec6-full'])}). FedDF reports "
        f"distillation on public data helping the small model; {verdict}."
    )


def _closer(plain: float, distilled: float, full: float) -> str:
    if any(math.isnan(v) for v in (plain, distilled, full)):
        return "not measured here."
    if abs(full - distilled) < abs(full - plain):
        return "here distillation brings the plug-in closer to it."
    return "here distillation does not bring the plug-in closer to it."
