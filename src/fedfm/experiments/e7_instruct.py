"""E7: federated instruction tuning and preference alignment of a chat model.

SmolLM2-135M-Instruct + LoRA on the offline instruction benchmark (``instruct``: four tasks
written from TREC-6, sentiment4, SMS spam and Shakespeare, ``docs/instruct.md``), four
clients:

(i) instruction tuning: the untouched model (zero-shot), local-only clients, FedAvg and
    centralised training on the pooled data, with IID clients and with task-heterogeneous
    clients (each client holds one task, as FedIT split Dolly by category); scored by
    generation (ROUGE-L and exact match, per task) and per client (mean, worst);
(ii) preference alignment: federated DPO on ``instruct-pref`` (the same prompts as pairs)
    starting from the task-heterogeneous FedAvg SFT adapter (its round 0 scores the SFT
    adapter before any DPO step).

The shape to compare with: FedIT (Zhang et al., ICASSP 2024) and OpenFedLLM (Ye et al.,
KDD 2024) find federated instruction tuning beats local-only training and approaches
centralised training.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedfm.datasets.instruct import TASK_NAMES
from fedfm.experiments.analysis import final, fmt, md_table
from fedfm.experiments.base import EXPERIMENTS, Arm, ArmResult, Experiment
from fedfm.experiments.runner import RUNS
from fedfm.io import atomic_write_bytes
from fedfm.run_files import GENERATIONS_FILE

# arm -> (part, label, overrides); the SFT arms first: the DPO arm starts from one of them
SFT_FROM = "fedavg-task"
ARMS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fedavg-iid": ("sft", "FedAvg, IID clients", ("data.partition=iid", "data.num_clients=4")),
    "fedavg-task": ("sft", "FedAvg, one task per client", ()),
    "local-task": ("sft", "local-only, one task per client", ("strategy.name=local",)),
    "central": ("sft", "centralised (pooled data)", ("strategy.name=centralized",)),
    "dpo-sft": (
        "dpo",
        "DPO from the FedAvg SFT adapter",
        (f"model.init_adapter={RUNS}/{SFT_FROM}",),
    ),
}
# data.partition = "natural" makes one client per task, in sorted task order
CLIENT_TASKS = tuple(sorted(TASK_NAMES))
MODEL = (
    "model.name=smollm2-135m",
    "model.dtype=bfloat16",
    "adapter.method=lora",
    "adapter.rank=8",
    "adapter.alpha=16",
    "client.lr=1e-3",
)


def _common(quick: bool) -> tuple[str, ...]:
    """Settings every arm shares (the data partition is by task unless an arm says IID)."""
    common = (
        *MODEL,
        "data.partition=natural",  # one client per task (4)
        "data.num_clients=0",
        "strategy.fraction=1",
        "eval.initial=true",
        "eval.per_client=true",
        "data.client_eval_fraction=0.2",
    )
    if quick:  # a smoke test: 8 examples a task, one round, 4 tokens generated
        return (
            *common,
            "rounds=1",
            "data.min_client_size=1",
            "data.max_train_examples=32",
            "data.max_test_examples=8",
            "data.max_length=96",
            "checkpoint.every=0",
            "client.batch_size=8",
        )
    return (
        *common,
        "rounds=3",
        "eval.every=3",  # round 0 and the last: generation is the costly part
        "data.max_train_examples=320",
        "data.max_test_examples=120",
        "data.max_length=160",
        "checkpoint.every=1",
    )


def _sft(quick: bool) -> tuple[str, ...]:
    gen = (
        ("eval.max_new_tokens=4", "eval.generate_max_prompts=4")
        if quick
        else (
            "eval.max_new_tokens=24",
            "eval.generate_max_prompts=40",
        )
    )
    return (
        "data.dataset=instruct",
        "eval.generate=true",
        "eval.generate_examples=8",
        "client.batch_size=8",
        *gen,
    )


def _dpo(quick: bool) -> tuple[str, ...]:
    """DPO: 4 pairs a batch (8 sequences and their reference pass), half the SFT rows."""
    rows = "data.max_train_examples=16" if quick else "data.max_train_examples=160"
    rounds = () if quick else ("rounds=2", "eval.every=2")
    return (
        "data.dataset=instruct-pref",
        "client.batch_size=4",
        "client.dpo_beta=0.1",
        rows,
        *rounds,
    )


@EXPERIMENTS.register("instruct")
class InstructExperiment(Experiment):
    name = "instruct"
    title = "E7: federated instruction tuning and DPO of SmolLM2-135M-Instruct"

    def arms(self, quick: bool) -> list[Arm]:
        arms = []
        for name, (part, label, overrides) in ARMS.items():
            task = _sft(quick) if part == "sft" else _dpo(quick)
            arms.append(
                Arm(name, (*_common(quick), *task, *overrides), {"part": part, "label": label})
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
        del measurements
        by = {r.arm.name: r for r in results}
        sft = [n for n, (part, _, _) in ARMS.items() if part == "sft"]
        rows = [_sft_row("zero-shot (round 0)", by["fedavg-iid"], initial=True)]
        rows += [_sft_row(ARMS[n][1], by[n]) for n in sft]
        sft_table = md_table(
            [
                "arm",
                "test ROUGE-L",
                "exact match",
                *TASK_NAMES,
                "client mean",
                "client worst",
                "test loss",
                "MB sent",
            ],
            rows,
        )
        dpo_rows = [_dpo_row(ARMS[n][1], by[n]) for n, (p, _, _) in ARMS.items() if p == "dpo"]
        dpo_table = md_table(
            [
                "arm",
                "pref. accuracy, round 0",
                "pref. accuracy",
                "reward margin",
                "client pref. accuracy, worst",
                "MB sent",
            ],
            dpo_rows,
        )
        client_table = md_table(
            ["arm", *(f"client {i}: {t}" for i, t in enumerate(CLIENT_TASKS))],
            [
                _client_row("zero-shot (round 0)", by[SFT_FROM].records[0]),
                *(_client_row(ARMS[n][1], _last_eval(by[n])) for n in sft if n != "fedavg-iid"),
            ],
        )
        _plot(by, out_dir / "tasks.png")
        cfg = by[SFT_FROM].config
        dpo_cfg = by["dpo-sft"].config
        examples = _examples(by[SFT_FROM], by["local-task"])
        return f"""
## Setting

SmolLM2-135M-Instruct (the built-in `smollm2-135m`, bfloat16) with LoRA rank
{cfg.adapter.rank} (alpha {cfg.adapter.alpha}) on {_targets(cfg.adapter.target_modules)};
the `instruct` benchmark (`docs/instruct.md`), {cfg.data.max_train_examples} training rows
drawn from its 1,200 (seeded), {cfg.data.max_test_examples} test rows; four clients, all of
them every round, {cfg.rounds} rounds of {cfg.client.epochs} local epoch at batch
{cfg.client.batch_size}, AdamW lr {cfg.client.lr}, sequences cut to {cfg.data.max_length}
tokens. "One task per client" is `data.partition = "natural"` (each client holds one task's
rows); "IID" draws each client's rows uniformly. Each client holds out
{cfg.data.client_eval_fraction:.0%} of its rows; "client mean" and "client worst" score
each client's model on its own held-out rows (the global model, or for local-only the
client's own). Generation: greedy, at most {cfg.eval.max_new_tokens} new tokens, on
{cfg.eval.generate_max_prompts or "all"} seeded test prompts (and at most as many of each
client's held-out rows); the task columns are ROUGE-L per task. For local-only, which has
no global model, the test columns are each client's own model on the same test prompts,
averaged over clients (`local_test_gen_*`). Centralised training passes once over the
pooled rows per round: the same number of steps as a FedAvg round. One seed ({cfg.seed}).

DPO: `instruct-pref` (the same prompts, `chosen` the reference, `rejected` a wrong label or
another speaker's speech), {dpo_cfg.data.max_train_examples} pairs, the same four
one-task clients, {dpo_cfg.rounds} rounds at {dpo_cfg.client.batch_size} pairs a batch,
beta {dpo_cfg.client.dpo_beta}; the reference is the backbone with the adapter switched
off. Round 0 of "DPO from the SFT adapter" scores the SFT adapter before any DPO step.

## (i) Instruction tuning

{sft_table}
![ROUGE-L per task](tasks.png)

Each one-task client on its own held-out rows (generated ROUGE-L; the IID arm's clients
hold every task, so it is left out):

{client_table}
## (ii) Preference alignment

{dpo_table}
## Against the published shape

{_shape(by)}

## Generated examples

After the last round, the first test example of each task in turn: the FedAvg model of the
one-task clients, and client 0's local-only model (it trained on `{CLIENT_TASKS[0]}` only).

{examples}
"""


def _targets(modules: tuple[str, ...]) -> str:
    """The LoRA targets as the report names them (empty: peft's default for Llama)."""
    return ", ".join(modules) if modules else "peft's default for Llama (q_proj, v_proj)"


def _by_task(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return dict(record.get(f"{prefix}_rouge_l_by_task") or {})


def _last_eval(r: ArmResult) -> Mapping[str, Any]:
    """The last evaluated round's record (every SFT arm scores its clients by generation)."""
    evaluated = [rec for rec in r.records if "client_gen_rouge_l_mean" in rec]
    return evaluated[-1] if evaluated else {}


def _sft_row(label: str, r: ArmResult, *, initial: bool = False) -> list[str]:
    rec = r.records[0] if initial else _last_eval(r)
    local = not initial and r.config.strategy.name == "local"
    prefix = "local_test_gen" if local else "test_gen"
    rouge = rec.get(f"{prefix}_rouge_l_mean" if local else "test_gen_rouge_l", float("nan"))
    exact = rec.get("test_gen_exact_match", float("nan"))
    tasks = _by_task(rec, prefix)
    mb = 0.0 if initial else r.summary["total_bytes"] / 1e6
    return [
        label,
        fmt(rouge),
        fmt(exact),
        *(fmt(tasks.get(t, float("nan"))) for t in TASK_NAMES),
        fmt(rec.get("client_gen_rouge_l_mean", float("nan"))),
        fmt(rec.get("client_gen_rouge_l_worst10", float("nan"))),
        fmt(rec.get("test_loss", float("nan"))),
        f"{mb:,.1f}",
    ]


def _client_row(label: str, record: Mapping[str, Any]) -> list[str]:
    scores = dict((int(c), v) for c, v in record.get("per_client_gen_rouge_l", []))
    return [label, *(fmt(scores.get(i, float("nan"))) for i in range(len(CLIENT_TASKS)))]


def _dpo_row(label: str, r: ArmResult) -> list[str]:
    return [
        label,
        fmt(r.records[0].get("test_preference_accuracy", float("nan"))),
        fmt(final(r.records, "test_preference_accuracy")),
        fmt(final(r.records, "test_reward_margin")),
        fmt(final(r.records, "client_preference_accuracy_worst10")),
        f"{r.summary['total_bytes'] / 1e6:,.1f}",
    ]


def _scores(r: ArmResult, *, initial: bool = False) -> tuple[float, dict[str, float]]:
    """``(test ROUGE-L, per task)`` of an SFT arm's last evaluation (or its round 0)."""
    rec = r.records[0] if initial else _last_eval(r)
    if not initial and r.config.strategy.name == "local":
        return rec.get("local_test_gen_rouge_l_mean", float("nan")), _by_task(rec, "local_test_gen")
    return rec.get("test_gen_rouge_l", float("nan")), _by_task(rec, "test_gen")


def _plot(by: Mapping[str, ArmResult], path: Path) -> None:
    bars = {"zero-shot": _scores(by["fedavg-iid"], initial=True)[1]}
    bars |= {ARMS[n][1]: _scores(by[n])[1] for n, (p, _, _) in ARMS.items() if p == "sft"}
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(bars)
    x = np.arange(len(TASK_NAMES))
    for i, (label, tasks) in enumerate(bars.items()):
        values = [tasks.get(t, np.nan) for t in TASK_NAMES]
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, TASK_NAMES)
    ax.set_ylabel("test ROUGE-L (generated)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _shape(by: Mapping[str, ArmResult]) -> str:
    """The comparison with FedIT and OpenFedLLM, worded from the numbers."""
    zero = _scores(by["fedavg-iid"], initial=True)[0]
    fed, local = _scores(by["fedavg-task"])[0], _scores(by["local-task"])[0]
    central, iid = _scores(by["central"])[0], _scores(by["fedavg-iid"])[0]
    gap = central - zero
    share = (fed - zero) / gap if gap > 0 else float("nan")
    beats = "beats" if fed > local else "does not beat"
    lines = [
        f"- Test ROUGE-L: zero-shot {fmt(zero)}, local-only {fmt(local)}, FedAvg with one task "
        f"per client {fmt(fed)}, FedAvg IID {fmt(iid)}, centralised {fmt(central)}.",
        f"- FedAvg {beats} local-only on the shared test set, as FedIT and OpenFedLLM report: "
        "a local-only client is good at its own task at best and never sees the others.",
        f"- FedAvg with one task per client closes {fmt(share, 2)} of the zero-shot to "
        "centralised gap (FedIT: federated tuning approaches centralised).",
        f"- Task heterogeneity costs {fmt(iid - fed)} ROUGE-L against IID clients.",
    ]
    pref0 = by["dpo-sft"].records[0].get("test_preference_accuracy", float("nan"))
    pref = final(by["dpo-sft"].records, "test_preference_accuracy")
    lines.append(
        f"- DPO: held-out preference accuracy {fmt(pref0)} for the SFT adapter before DPO, "
        f"{fmt(pref)} after federated DPO from it (OpenFedLLM: federated DPO after SFT "
        "improves alignment over SFT alone)."
    )
    return "\n".join(lines)


_CELL = re.compile(r"(?<!\\)\|")


def _examples(federated: ArmResult, local: ArmResult) -> str:
    """The federated arm's ``generations.md`` table with the local-only arm's column."""
    paths = [Path(r.config.output_dir) / r.arm.name / GENERATIONS_FILE for r in (federated, local)]
    if not all(p.is_file() for p in paths):
        return "(no generations.md: eval.generate_examples = 0)"
    tables = [[ln for ln in p.read_text().splitlines() if ln.startswith("| ")] for p in paths]
    lines = tables[0][:1] + ["|---|---|---|---|"]
    for fed_row, local_row in zip(tables[0][1:], tables[1][1:], strict=False):
        cells, local_cells = _CELL.split(fed_row)[1:-1], _CELL.split(local_row)[1:-1]
        cells[3] = local_cells[3]
        lines.append("|" + "|".join(cells) + "|")
    return "\n".join(lines).replace("| global model |", "| FedAvg model |") + "\n"
