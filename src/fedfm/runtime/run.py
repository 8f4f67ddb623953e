"""A run: one execution of a config, written to ``runs/<name>/`` as it goes.

The folder holds the resolved ``config.toml``, ``metrics.jsonl`` (a record per round, written
as each round ends), ``checkpoint.safetensors`` (atomic, every ``checkpoint.every`` rounds),
and at the end ``summary.json``, ``curves.png``, ``adapter.safetensors`` (a personalised run:
``clients/ID.safetensors``, one per client), the same result in the Hugging Face formats
(``adapter/``, a peft folder, or ``model/``; ``labels.json``: see ``fedfm.models.export``),
the features' own files (``generations.md`` with ``eval.generate``) and a model card.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedfm import run_files
from fedfm.client.fit import with_personal
from fedfm.config import RunConfig, to_toml
from fedfm.errors import FedFMError
from fedfm.features import each
from fedfm.io import atomic_write_json
from fedfm.models.export import Export, export_run
from fedfm.models.params import Params, num_params, save_params_file, set_params
from fedfm.report.card import write_model_card
from fedfm.report.metrics import MetricsLog, read_records
from fedfm.report.plots import plot_curves
from fedfm.runtime.asynchronous import run_async_round
from fedfm.runtime.checkpoint import (
    Checkpoint,
    check_config,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from fedfm.runtime.job import Job, build_job
from fedfm.runtime.run_folder import (  # noqa: F401 (prepare_run_dir, resume_config: public here)
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    prepare_run_dir,
    resume_config,
)
from fedfm.runtime.simulation import RoundState, initial_record, run_round
from fedfm.runtime.transports import TRANSPORTS, Opener


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def round_line(record: dict[str, Any], rounds: int) -> str:
    """One human line per round: main metrics, bytes, seconds."""
    parts = [f"round {record['round']:>3}/{rounds}"]
    for key, label in (
        ("test_accuracy", "acc"),
        ("client_accuracy_mean", "client acc"),
        ("client_perplexity_mean", "client ppl"),
        ("test_macro_f1", "f1"),
        ("test_perplexity", "ppl"),
        ("test_preference_accuracy", "pref acc"),
        ("test_reward_margin", "margin"),
        ("test_loss", "loss"),
        ("client_accuracy_worst10", "worst10% acc"),
        ("test_gen_rouge_l", "rougeL"),  # eval.generate's main score, by eval.scorer
        ("test_gen_accuracy", "gen acc"),
        ("client_gen_rouge_l_mean", "client rougeL"),
        ("client_gen_accuracy_mean", "client gen acc"),
    ):
        if key in record:
            parts.append(f"{label} {record[key]:.4f}")
    if "train_loss" in record:
        parts.append(f"train_loss {record['train_loss']:.4f}")
    if "test_attack_success_rate" in record:
        parts.append(f"attack success {record['test_attack_success_rate']:.4f}")
    if "epsilon" in record:
        parts.append(f"eps {record['epsilon']:.3g}")
    if "dpsgd_epsilon_max" in record:
        parts.append(f"dp-sgd eps (worst client) {record['dpsgd_epsilon_max']:.3g}")
    parts.append(f"sent {_mb(record['bytes_down'] + record['bytes_up'])}")
    parts.append(
        f"(cum {_mb(record['cum_bytes'])} vs full model {_mb(record['full_model_cum_bytes'])})"
    )
    parts.append(f"{record['seconds']:.1f} s")
    if "staleness" in record:  # an asynchronous step: how stale, and when on its clock
        parts.append(f"staleness ≤ {record['staleness_max']}  clock {record['sim_clock']:.1f}")
    if record.get("excluded"):
        parts.append(f"[excluded {len(record['excluded'])}]")
    if record.get("test_predicted_classes") == 1:  # accuracy alone hides this
        parts.append("[warning: the global model predicts a single class]")
    return "  ".join(parts)


def print_round(console: Console, record: dict[str, Any], rounds: int) -> None:
    """The round's line on the console, as plain text: its ``[excluded N]`` and ``[warning:
    ...]`` are not rich markup (rich once swallowed both)."""
    console.print(round_line(record, rounds), soft_wrap=True, highlight=False, markup=False)


def _load_for_resume(cfg: RunConfig, run_dir: Path) -> Checkpoint:
    """The run's checkpoint, checked before any model loads; ``rounds`` may not go back."""
    ckpt = load_checkpoint(run_dir)
    if cfg.rounds < ckpt.round:
        raise FedFMError(
            f"rounds = {cfg.rounds} is below the {ckpt.round} rounds {run_dir} has done: a "
            f"resume goes on from round {ckpt.round}, it cannot go back. Resume with --set "
            f"rounds={ckpt.round} or more (its summary.json and model card are left as they are)"
        )
    return ckpt


def _restore(job: Job, ckpt: Checkpoint, run_dir: Path, log: MetricsLog) -> RoundState:
    check_config(ckpt, job.cfg, run_dir / CHECKPOINT_FILE)  # as saved: a file's labels filled in
    if ckpt.backbone != job.backbone:
        raise FedFMError(
            f"checkpoint in {run_dir} was made on backbone {ckpt.backbone}, but this config loads "
            f"backbone {job.backbone}: resume with the run's own config.toml"
        )
    job.strategy.load_state_dict(ckpt.strategy_state)
    for feature in job.features:
        feature.load_state_dict(ckpt.features.get(feature.name, {}))
        feature.load_tensor_state(ckpt.feature_tensors.get(feature.name, {}))
    restore_rng(ckpt.rng)
    log.truncate_after(ckpt.round)
    records = read_records(run_dir / METRICS_FILE)
    last = records[-1] if records else {}
    return RoundState(
        round=ckpt.round,
        global_params=ckpt.global_params,
        client_states=ckpt.client_states,
        personal=ckpt.personal,
        pipeline_states=ckpt.pipeline_states,
        cum_bytes=last.get("cum_bytes", 0),
        full_model_cum_bytes=last.get("full_model_cum_bytes", 0),
    )


def _checkpoint(job: Job, run_dir: Path, state: RoundState) -> None:
    save_checkpoint(
        run_dir,
        Checkpoint(
            round=state.round,
            global_params=state.global_params,
            strategy_state=job.strategy.state_dict(),
            client_states=state.client_states,
            backbone=job.backbone,
            rng=rng_state(),
            personal=state.personal,
            pipeline_states=state.pipeline_states,
            features={f.name: f.state_dict() for f in job.features if f.state_dict()},
            feature_tensors={f.name: f.tensor_state() for f in job.features if f.tensor_state()},
        ),
        cfg=job.cfg,
    )


def _summary(
    job: Job, state: RoundState, records: list[dict[str, Any]], wall: float
) -> dict[str, Any]:
    cfg, metric = job.cfg, job.task.main_metric
    # a personalised run (local) has no global model: its headline is the client mean
    key = f"client_{metric}_mean" if job.strategy.personalized else f"test_{metric}"
    evaluated = [r for r in records if key in r and r["round"] > 0]
    final = (
        {k: v for k, v in evaluated[-1].items() if k.startswith(("test_", "client_"))}
        if evaluated
        else {}
    )
    values = [r[key] for r in evaluated if r[key] is not None]  # NaN is logged as null
    best = (max(values) if job.task.higher_is_better else min(values)) if values else None
    return {
        "name": cfg.run_name,
        "task": job.dataset.task,
        "model": cfg.model.name,
        "pretrained": cfg.model.pretrained,
        "adapter": cfg.adapter.method,
        "dataset": cfg.data.dataset,
        "partition": cfg.data.partition,
        "strategy": cfg.strategy.name,
        "num_clients": len(job.federation),
        "rounds_completed": state.round,
        "final": final,
        f"best_{key}": best,
        "total_bytes": state.cum_bytes,
        "full_model_total_bytes": state.full_model_cum_bytes,
        "wall_seconds": wall,
        "trainable_params": num_params(state.global_params),
        "total_params": job.total_params,
        "backbone_hash": job.backbone,
        "excluded_updates": sum(len(r["excluded"]) for r in records),
        **_truncations(job),
        **each(job.features, lambda f: f.summary(job, records)),
    }


def _truncations(job: Job) -> dict[str, Any]:
    """An instruction run's examples cut to ``data.max_length``, in the training pool and
    the test set: their prompt side shortened, their response's end cut (see
    :mod:`fedfm.data.chat`); nothing for the other tasks."""
    if job.train.masks is None:
        return {}
    return {
        "truncated_prompts": {
            "train": job.train.truncated_prompts,
            "test": job.test.truncated_prompts,
        },
        "truncated_responses": {
            "train": job.train.truncated_responses,
            "test": job.test.truncated_responses,
        },
    }


def _truncation_warning(job: Job) -> str | None:
    """A line for the start of a run whose responses were cut, else ``None``."""
    cut = job.train.truncated_responses + job.test.truncated_responses
    if not cut:
        return None
    return (
        f"warning: {job.train.truncated_responses} of {len(job.train)} training and "
        f"{job.test.truncated_responses} of {len(job.test)} test responses are longer than "
        f"data.max_length = {job.cfg.data.max_length} tokens and lose their end (counted in "
        "summary.json as truncated_responses); raise data.max_length to keep them whole"
    )


MERGED_FILE = run_files.MERGED_FILE  # dense additions to frozen weights (flora, reproject off)


def _finish(
    job: Job, run_dir: Path, state: RoundState, wall: float, *, plot: bool
) -> dict[str, Any]:
    records = read_records(run_dir / METRICS_FILE)
    summary = _summary(job, state, records, wall)
    atomic_write_json(run_dir / "summary.json", summary)
    if plot:
        plot_curves(records, run_dir / "curves.png", title=job.cfg.run_name)
    meta = {"model": job.cfg.model.name, "adapter": job.cfg.adapter.method}
    if job.strategy.personalized:  # no global model: each client's own params
        for client in job.federation.clients:
            params = with_personal(
                job.strategy.personal_params(
                    state.global_params, state.client_states.get(client.id, {})
                ),
                state.personal.get(client.id, {}),
            )
            save_params_file(
                run_dir / "clients" / f"{client.id}.safetensors",
                params,
                backbone=job.backbone,
                **meta,
            )
    else:
        save_params_file(
            run_dir / run_files.PARAMS_FILE, state.global_params, backbone=job.backbone, **meta
        )
    merged = job.strategy.backbone_delta()
    if merged:  # FLoRA without re-projection: the model is the frozen weights plus these
        save_params_file(
            run_dir / MERGED_FILE,
            {k: job.lora_scale * v for k, v in merged.items()},
            backbone=job.backbone,
            **meta,
        )
    export = _export(job, state.global_params, run_dir)
    for feature in job.features:  # their own files (generations.md), which the card lists
        feature.finish(job, state, run_dir)
    write_model_card(run_dir, summary=summary, config_toml=to_toml(job.cfg), export=export)
    return summary


def _export(job: Job, params: Params, run_dir: Path) -> Export:
    """The run's result in the Hugging Face formats (``adapter/`` or ``model/``, labels)."""
    if not job.strategy.personalized:
        set_params(job.model, params)  # the final global params, whatever ran last
    return export_run(
        run_dir,
        model=job.model,
        tokenizer=job.tokenizer,
        method=job.cfg.adapter.method,
        task=job.dataset.task,
        # an instruction dataset's label names are categories of rows, not of the model
        label_names=() if job.causal_lm else job.dataset.label_names,
        pretrained=job.cfg.model.pretrained,
        personalized=job.strategy.personalized,
        backbone_delta=job.strategy.backbone_delta(),
        lora_scale=job.lora_scale,
    )


def _begin(
    cfg: RunConfig, run_dir: Path, ckpt: Checkpoint | None, console: Console
) -> tuple[Job, RoundState, MetricsLog]:
    """Build the job, restore a checkpoint's state (or start at round 0), start the
    features, say what runs, and log round 0 when ``eval.initial`` asks for it."""
    synthetic = None
    if cfg.synthetic.mode != "none":  # outside the status line: generation shows a progress bar
        from fedfm.synthetic.build import synthesize

        synthetic = synthesize(cfg, console=console)
    with console.status("loading data and model ..."):
        job = build_job(cfg, synthetic=synthetic)
    log = MetricsLog(run_dir / METRICS_FILE)
    if ckpt is not None:
        state = _restore(job, ckpt, run_dir, log)
        console.print(f"resumed after round {state.round}")
    else:
        state = RoundState(round=0, global_params=job.initial_params)
    console.print(
        f"{job.dataset.name}: {len(job.federation)} clients, {len(job.dataset.test)} test examples"
        f" · {cfg.model.name} + {cfg.adapter.method}: {num_params(state.global_params):,} trainable"
        f" of {job.total_params:,} params · backbone {job.backbone} · {cfg.strategy.name}",
        soft_wrap=True,
    )
    warning = _truncation_warning(job)
    if warning:
        console.print(warning, soft_wrap=True, highlight=False, markup=False)
    for feature in job.features:  # e.g. the DP budget, a server warm-up
        feature.start(job, run_dir, state.round)
        for line in feature.banner(job):
            console.print(line, soft_wrap=True)
    if cfg.eval.initial and state.round == 0:
        with console.status("evaluating the initial model ..."):
            record = initial_record(job, state)
        log.append(record)
        print_round(console, record, cfg.rounds)
    return job, state, log


def _bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def execute(
    cfg: RunConfig,
    *,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
    backend: str | Opener | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the federated job of ``cfg`` in ``run_dir``; return the summary.

    Args:
        stop_after: stop after this round without finishing (to test resume after a crash).
        backend: the transport that carries the clients: a name from
            :data:`~fedfm.runtime.transports.TRANSPORTS` (``fedfm serve`` asks for
            ``"remote"``) or an opener ``(job, run_dir, console) -> context manager``
            yielding a :class:`~fedfm.runtime.simulation.Transport`; by default
            ``cfg.backend``'s.
        plot: draw the run's ``curves.png`` (about 1.5 s of matplotlib; experiments' quick
            versions skip it).
    """
    console = console or Console()
    started = time.perf_counter()
    backend = backend or cfg.backend
    opener = TRANSPORTS.get(backend, field="backend") if isinstance(backend, str) else backend
    ckpt = _load_for_resume(cfg, run_dir) if resume else None  # a bad one fails before loading
    console.print(f"[bold]fedfm[/] run [cyan]{cfg.run_name}[/] → {run_dir}", soft_wrap=True)
    job, state, log = _begin(cfg, run_dir, ckpt, console)
    cohort = job.strategy.cohort_size(len(job.federation))
    if cfg.asynchronous.enabled:  # a step waits for K updates, not for a cohort
        cohort = job.feature("asynchronous").buffer
    with opener(job, run_dir, console) as transport, _bars(console) as progress:
        rounds_bar = progress.add_task("rounds", total=job.rounds, completed=state.round)
        clients_bar = progress.add_task("clients", total=cohort)
        while state.round < job.rounds:
            progress.reset(clients_bar, total=cohort)
            record = (run_async_round if cfg.asynchronous.enabled else run_round)(
                job, state, on_client=lambda _: progress.advance(clients_bar), transport=transport
            )
            log.append(record)
            for feature in job.features:  # e.g. the privacy ledger's line
                feature.after_round(job, record)
            print_round(console, record, cfg.rounds)
            every = cfg.checkpoint.every
            if every and (state.round % every == 0 or state.round == job.rounds):
                _checkpoint(job, run_dir, state)
            progress.advance(rounds_bar)
            if stop_after is not None and state.round >= stop_after:
                return {"stopped_after": state.round}
    summary = _finish(job, run_dir, state, time.perf_counter() - started, plot=plot)
    console.print(
        f"done in {summary['wall_seconds']:.0f} s → {run_dir} "
        f"(metrics.jsonl, {'curves.png, ' if plot else ''}adapter.safetensors, {CHECKPOINT_FILE})",
        soft_wrap=True,
    )
    return summary
