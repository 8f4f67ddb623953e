"""Run an experiment's arms (resuming or reusing what is already done) and write its report.

Layout, for ``fedfm exp NAME``::

    experiments/NAME/            the committed report (``--quick``: runs/exp-quick/NAME/)
        report.md                setting, plots, tables, comparison with the published shape
        *.png                    the plots
        results.json             every arm's labels, config, per-round records and summary
        configs/ARM.toml         every arm's resolved config
    runs/exp/NAME/ARM/           each arm's run folder (checkpoints, adapters; not committed)

An arm whose run folder holds a ``summary.json`` made from the same config is reused; one
with a checkpoint is resumed; so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from fedfm.config import RunConfig, load_config, to_dict, to_toml
from fedfm.errors import ConfigError, FedFMError
from fedfm.experiments.base import EXPERIMENTS, Arm, ArmResult, Experiment
from fedfm.io import atomic_write_json, atomic_write_text
from fedfm.report.metrics import read_records
from fedfm.runtime.checkpoint import CHECKPOINT_FILE
from fedfm.runtime.run import CONFIG_FILE, METRICS_FILE, execute, prepare_run_dir

DISCUSSION_FILE = "discussion.md"


def default_dirs(name: str, *, quick: bool) -> tuple[Path, Path]:
    """``(report folder, runs folder)`` for experiment ``name``."""
    if quick:
        return Path("runs/exp-quick") / name, Path("runs/exp-quick") / name / "runs"
    return Path("experiments") / name, Path("runs/exp") / name


# E1-E6 ran with plain cross-entropy, before client.loss = "balanced" became the default; an
# arm may still choose its own loss
PINNED = ("client.loss=ce",)


RUNS = "{runs}"  # in an arm's override: the runs folder (an earlier arm's run is RUNS/ARM)


def arm_config(arm: Arm, runs_dir: Path) -> RunConfig:
    overrides = [o.replace(RUNS, str(runs_dir)) for o in arm.overrides]
    return load_config(None, [*PINNED, *overrides, f"name={arm.name}", f"output_dir={runs_dir}"])


def _unset_pins(path: Path) -> list[str]:
    """The :data:`PINNED` overrides whose keys a saved config does not hold (it predates them)."""
    table = tomllib.loads(path.read_text())
    missing = []
    for pin in PINNED:
        *tables, key = pin.split("=", 1)[0].split(".")
        node = table
        for name in tables:
            node = node.get(name, {})
        if key not in node:
            missing.append(pin)
    return missing


def _same_config(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether the run in ``run_dir`` used ``cfg`` (compared as resolved configs, so a key added
    to fedfm later, at its default, does not invalidate earlier runs; ``output_dir`` is where
    the run lives, not what it computes, so the same runs dir spelled another way matches)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        old = load_config(path, _unset_pins(path))
    except (ConfigError, tomllib.TOMLDecodeError):  # written by a fedfm whose keys are gone
        return False
    return replace(old, output_dir=cfg.output_dir) == cfg


def run_arm(arm: Arm, runs_dir: Path, console: Console, *, plot: bool = True) -> ArmResult:
    """Run one arm, or reuse its finished run, or resume its interrupted one.

    ``plot=False`` leaves out the run's own ``curves.png`` (the quick versions: the report
    draws its own figures).
    """
    cfg = arm_config(arm, runs_dir)
    run_dir = runs_dir / arm.name
    summary_path = run_dir / "summary.json"
    same = _same_config(run_dir, cfg)
    if same and summary_path.is_file():
        console.print(f"[dim]reusing finished run {run_dir}[/]")
    elif same and (run_dir / CHECKPOINT_FILE).is_file():
        execute(cfg, run_dir=run_dir, resume=True, console=console, plot=plot)
    else:
        execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=True), console=console, plot=plot)
    return ArmResult(
        arm=arm,
        config=cfg,
        records=read_records(run_dir / METRICS_FILE),
        summary=json.loads(summary_path.read_text()),
    )


def _select(arms: list[Arm], only: str | None) -> list[Arm]:
    if only is None:
        return arms
    chosen = [a for a in arms if fnmatch.fnmatch(a.name, only)]
    if not chosen:
        names = ", ".join(a.name for a in arms[:8])
        raise FedFMError(f"--only '{only}' matches no arm; arms are named like: {names}, ...")
    return chosen


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    out_dir: Path | None = None,
    runs_dir: Path | None = None,
    only: str | None = None,
    remeasure: bool = False,
    console: Console | None = None,
) -> Path:
    """Run experiment ``name`` and write its report; returns the path of ``report.md``.

    Args:
        only: a glob over arm names: run just those arms and skip the report (to spread a
            long experiment over several sessions or machines).
        remeasure: run the measurements again even if ``runs_dir`` holds them for the same
            arms (they are cached there, so re-rendering a report is cheap).
    """
    console = console or Console()
    experiment: Experiment = EXPERIMENTS.get(name, field="experiment")()
    default_out, default_runs = default_dirs(name, quick=quick)
    out_dir, runs_dir = out_dir or default_out, runs_dir or default_runs
    arms = experiment.arms(quick)
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise FedFMError(f"experiment {name} defines duplicate arm names")
    started = time.perf_counter()
    results = []
    selected = _select(arms, only)
    for i, arm in enumerate(selected, 1):
        console.rule(f"{name} · arm {i}/{len(selected)} · {arm.name}")
        results.append(run_arm(arm, runs_dir, console, plot=not quick))
    if only is not None:
        console.print(f"ran {len(results)} arms of {name}; run without --only for the report")
        return out_dir / "report.md"
    console.rule(f"{name} · measurements and report")
    measurements = _measure(experiment, arms, quick, runs_dir, remeasure, console)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = experiment.report(results, measurements, out_dir, quick=quick)
    wall = time.perf_counter() - started
    write_results(out_dir, name, quick, results, measurements)
    report = out_dir / "report.md"
    atomic_write_text(report, _assemble(experiment, body, out_dir, quick=quick))
    console.print(f"{name}: {len(results)} arms in {wall:.0f} s → {report}")
    return report


MEASUREMENTS_FILE = "measurements.json"


def _measure(
    experiment: Experiment,
    arms: list[Arm],
    quick: bool,
    runs_dir: Path,
    remeasure: bool,
    console: Console,
) -> dict[str, Any]:
    """The experiment's measurements, from ``runs_dir``'s cache when made for the same arms."""
    arms_key = repr((quick, [(a.name, a.overrides) for a in arms]))
    key = hashlib.sha256(arms_key.encode()).hexdigest()
    path = runs_dir / MEASUREMENTS_FILE
    if path.is_file() and not remeasure:
        cached = json.loads(path.read_text())
        if cached.get("arms_key") == key:
            console.print(f"[dim]reusing measurements in {path} (--remeasure to redo)[/]")
            return _nan_from_null(cached["measurements"])
    measurements = experiment.measure(quick, runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"arms_key": key, "measurements": _null_nan(measurements)})
    return measurements


def _nan_from_null(value: Any) -> Any:
    if value is None:
        return float("nan")
    if isinstance(value, dict):
        return {k: _nan_from_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_from_null(v) for v in value]
    return value


def write_results(
    out_dir: Path,
    name: str,
    quick: bool,
    results: list[ArmResult],
    measurements: dict[str, Any],
) -> None:
    for stale in (out_dir / "configs").glob("*.toml"):  # arms no longer in the experiment
        stale.unlink()
    for r in results:
        atomic_write_text(out_dir / "configs" / f"{r.arm.name}.toml", to_toml(r.config))
    atomic_write_json(
        out_dir / "results.json",
        {
            "experiment": name,
            "quick": quick,
            "arms": [
                {
                    "name": r.arm.name,
                    "labels": dict(r.labels),
                    "config": to_dict(r.config),
                    "summary": r.summary,
                    "records": r.records,
                }
                for r in results
            ],
            "measurements": _null_nan(measurements),
        },
    )


def _null_nan(value: Any) -> Any:
    """NaN and Inf as ``null`` (as in metrics.jsonl): results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _null_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_null_nan(v) for v in value]
    return value


def _assemble(experiment: Experiment, body: str, out_dir: Path, *, quick: bool) -> str:
    command = f"fedfm exp {experiment.name}" + (" --quick" if quick else "")
    head = (
        f"# {experiment.title}\n\n"
        f"Produced by `{command}`; every number below comes from `results.json` and the "
        "arm configs in `configs/` beside this file.\n"
    )
    if quick:
        head += (
            "\n> **Quick version**: a tiny smoke-test grid. Its numbers show that the "
            "pipeline works, not the claims.\n"
        )
    discussion = out_dir / DISCUSSION_FILE
    tail = f"\n## Discussion\n\n{discussion.read_text()}" if discussion.is_file() else ""
    return head + "\n" + body.strip() + "\n" + tail
