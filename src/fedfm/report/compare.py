"""Side-by-side comparison of finished runs: one figure and one markdown table.

``fedfm report runs/a runs/b --out reports/ab`` ends up here: each run folder's
``metrics.jsonl`` and ``summary.json`` are read, and ``comparison.png`` (all runs' learning
curves on one 2×2 figure) and ``comparison.md`` (one row per run) are written; when every
run records a simulated clock (``sim_clock``: ``[system]`` speeds, a deadline, or
asynchronous rounds), also ``comparison_sim_clock.png``, the main metric against it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfm.errors import FedFMError
from fedfm.io import atomic_write_text
from fedfm.report.metrics import read_records
from fedfm.report.plots import (
    format_mb,
    is_finite_number,
    plot_against_clock,
    plot_comparison,
)

MISSING = "–"  # shown in a table cell whose value was not logged

_RATE_KEYS = ("accuracy", "macro_f1")  # metrics in [0, 1], shown as percentages


@dataclass(frozen=True)
class RunData:
    """What a comparison needs from one run folder.

    Attributes:
        folder: The run folder.
        name: Display name: the summary's ``name``, else the folder name.
        records: The round records of ``metrics.jsonl``.
        summary: The parsed ``summary.json``.
    """

    folder: Path
    name: str
    records: list[dict[str, Any]]
    summary: dict[str, Any]


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder's ``metrics.jsonl`` and ``summary.json``.

    Args:
        run_dir: A folder written by a fedfm run (``runs/<name>``).

    Returns:
        The run's records and summary.

    Raises:
        FedFMError: The folder or one of the two files is missing, or the summary is not JSON.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FedFMError(f"{folder} does not exist or is not a folder: pass a run folder.")
    metrics_path, summary_path = folder / "metrics.jsonl", folder / "summary.json"
    for path in (metrics_path, summary_path):
        if not path.is_file():
            raise FedFMError(f"{folder} has no {path.name}: is it a fedfm run folder?")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FedFMError(f"{summary_path} is not valid JSON ({err.msg}).") from err
    if not isinstance(summary, dict):
        raise FedFMError(f"{summary_path} should hold a JSON object, not {type(summary).__name__}.")
    name = str(summary.get("name") or folder.name)
    return RunData(folder, name, read_records(metrics_path), summary)


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.png`` and ``comparison.md`` for several runs into ``out_dir`` (and
    :data:`CLOCK_PLOT` when every run records ``sim_clock``).

    Args:
        run_dirs: Run folders, in the order they should appear.
        out_dir: Output folder (created if needed).

    Returns:
        ``(png_path, md_path)``.

    Raises:
        FedFMError: No run folder was given, or one is not a fedfm run folder.

    Example:
        >>> compare_runs(["runs/fedavg", "runs/fedprox"], "reports/ab")  # doctest: +SKIP
        (PosixPath('reports/ab/comparison.png'), PosixPath('reports/ab/comparison.md'))
    """
    if not run_dirs:
        raise FedFMError("compare_runs needs at least one run folder, got none.")
    runs = _unique_names([load_run(d) for d in run_dirs])
    out = Path(out_dir)
    png = plot_comparison(
        {r.name: r.records for r in runs}, out / "comparison.png", title="Run comparison"
    )
    clock = None
    if all(any(is_finite_number(x.get("sim_clock")) for x in r.records) for r in runs):
        clock = plot_against_clock(  # every run ran on the simulated clock ([system] speeds)
            {r.name: r.records for r in runs}, out / CLOCK_PLOT, title="Run comparison"
        )
    text = comparison_markdown(runs, png.name, clock.name if clock is not None else None)
    md = atomic_write_text(out / "comparison.md", text)
    return png, md


CLOCK_PLOT = "comparison_sim_clock.png"  # written when every run records sim_clock


def _unique_names(runs: list[RunData]) -> list[RunData]:
    """Rename runs whose name repeats (same run name in two folders) to their folder path."""
    names = [r.name for r in runs]
    return [
        RunData(r.folder, str(r.folder), r.records, r.summary) if names.count(r.name) > 1 else r
        for r in runs
    ]


def comparison_markdown(
    runs: Sequence[RunData], image_name: str = "comparison.png", clock_image: str | None = None
) -> str:
    """Return the markdown report: a heading, the table, the figure(s) and the run folders."""
    clock = f"![learning curves by simulated time]({clock_image})\n\n" if clock_image else ""
    columns = _columns(runs)
    table = markdown_table([_row(r) for r in runs], columns)
    folders = "\n".join(f"- `{r.name}`: `{r.folder}`" for r in runs)
    return (
        "# Run comparison\n\n"
        f"{table}\n\n"
        "Data sent counts both directions (server → clients and back), in MB of 10^6 bytes; "
        "the full-model column is what the same rounds would have sent with full-model FL.\n\n"
        f"![learning curves]({image_name})\n\n"
        f"{clock}"
        f"Runs:\n\n{folders}\n"
    )


def _columns(runs: Sequence[RunData]) -> list[tuple[str, str]]:
    """The table's columns; metric columns only for the metrics some run logged."""
    has = {key for r in runs for key in (*_final_metrics(r), *r.summary)}
    metric_cols = [
        (key, header)
        for key, header in (
            ("test_accuracy", "final accuracy"),
            ("test_macro_f1", "final macro-F1"),
            ("best_test_accuracy", "best accuracy"),
            ("test_perplexity", "final perplexity"),
            ("best_test_perplexity", "best perplexity"),
        )
        if key in has or key.removeprefix("best_") in has
    ]
    return [
        ("run", "run"),
        ("model", "model"),
        ("dataset", "dataset"),
        ("strategy", "strategy"),
        ("rounds", "rounds"),
        *metric_cols,
        ("total_bytes", "data sent"),
        ("full_model_total_bytes", "full-model equivalent"),
        ("wall_seconds", "wall time (s)"),
    ]


def _row(run: RunData) -> dict[str, str]:
    """One table row of formatted cells for ``run``."""
    s = run.summary
    final = _final_metrics(run)
    last = run.records[-1] if run.records else {}
    rounds = s.get("rounds_completed", last.get("round"))
    total = s.get("total_bytes", last.get("cum_bytes"))
    full = s.get("full_model_total_bytes", last.get("full_model_cum_bytes"))
    row = {
        "run": run.name,
        "model": _text(s.get("model")),
        "dataset": _text(s.get("dataset")),
        "strategy": _text(s.get("strategy")),
        "rounds": _text(rounds),
        "total_bytes": format_mb(total) if is_finite_number(total) else MISSING,
        "full_model_total_bytes": format_mb(full) if is_finite_number(full) else MISSING,
        "wall_seconds": format_seconds(s.get("wall_seconds")),
    }
    for key in ("test_accuracy", "test_macro_f1", "test_perplexity"):
        row[key] = format_metric(key, final.get(key))
    for key in ("best_test_accuracy", "best_test_perplexity"):
        row[key] = format_metric(key, s.get(key))
    return row


def _final_metrics(run: RunData) -> dict[str, Any]:
    """The run's final metrics: the summary's ``final``, else the last logged value of each."""
    final = run.summary.get("final")
    if isinstance(final, Mapping) and final:
        return dict(final)
    latest: dict[str, Any] = {}
    for record in run.records:
        latest.update({k: v for k, v in record.items() if k.startswith(("test_", "client_"))})
    return latest


def format_metric(key: str, value: Any) -> str:
    """Format a metric for a table: rates as percentages, perplexity and losses as decimals.

    Example:
        >>> format_metric("test_accuracy", 0.8734), format_metric("test_perplexity", 23.456)
        ('87.34%', '23.46')
    """
    if not is_finite_number(value):
        return MISSING
    if any(part in key for part in _RATE_KEYS):
        return f"{100 * value:.2f}%"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def format_seconds(value: Any) -> str:
    """Format a duration in seconds: one decimal below 100 s, whole seconds above."""
    if not is_finite_number(value):
        return MISSING
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Render rows as a GitHub-flavoured markdown table.

    A column whose cells all look numeric is right-aligned. Missing or ``None`` cells show
    as "–"; ``|`` inside a cell is escaped.

    Args:
        rows: One mapping per row, key → cell value.
        columns: ``(key, header)`` pairs, in display order.

    Returns:
        The table, without a trailing newline.

    Example:
        >>> print(markdown_table([{"run": "a", "acc": "90.00%"}], [("run", "run"), ("acc", "acc")]))
        | run | acc |
        | --- | ---: |
        | a | 90.00% |
    """
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    aligns = [
        "---:" if _numeric_column([c[i] for c in cells]) else "---" for i in range(len(columns))
    ]
    lines = [
        _md_line([_cell(header) for _, header in columns]),
        _md_line(aligns),
        *(_md_line(c) for c in cells),
    ]
    return "\n".join(lines)


def _md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(value: Any) -> str:
    """A table cell's text: ``None`` → "–", newlines flattened, pipes escaped."""
    if value is None:
        return MISSING
    return str(value).replace("\n", " ").replace("|", "\\|")


def _numeric_column(cells: Sequence[str]) -> bool:
    """True if every filled cell starts like a number (digits, sign, or a decimal point)."""
    filled = [c for c in cells if c != MISSING]
    return bool(filled) and all(c[0].isdigit() or c[0] in "+-." for c in filled)


def _text(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)
