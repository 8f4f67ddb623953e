"""Learning curves of one run or several: quality against rounds and against bytes sent.

Every figure has the same 2×2 layout, so a single run's ``curves.png`` and a
``comparison.png`` read the same way::

    main metric vs round   | main metric vs cumulative MB
    loss vs round          | loss vs cumulative MB

Under accuracy, macro-F1 is drawn dotted in the same colour: a model that predicts one class
keeps a fair accuracy on a skewed test set while its macro-F1 falls to about 1 / classes.

The main metric is ``test_accuracy`` (classification), ``test_perplexity`` (causal LM and
instruction, log scale) or ``test_preference_accuracy`` (preference, DPO), chosen by which key
the records hold. Eval curves use only the rounds where evaluation
ran; ``train_loss`` (dashed) uses every round. Figures are drawn with matplotlib's Agg canvas
directly (no ``pyplot``, no global backend switch) and saved atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from fedfm.io import atomic_write_bytes

if TYPE_CHECKING:  # matplotlib loads only to draw: format_mb and friends need none of it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Record = Mapping[str, Any]

_LABELS = {
    "test_accuracy": "test accuracy",
    "test_perplexity": "test perplexity",
    "test_preference_accuracy": "test preference accuracy",
    "test_loss": "loss",
}
_MARKER_MAX_POINTS = 40  # draw point markers only while a curve is sparse enough to read them


def format_mb(num_bytes: float) -> str:
    """Format a byte count as megabytes (10^6 bytes) with about three significant digits.

    Example:
        >>> format_mb(3_141_592), format_mb(910_000_000), format_mb(12_345)
        ('3.14 MB', '910 MB', '0.0123 MB')
    """
    mb = num_bytes / 1e6
    text = f"{mb:,.0f}" if mb >= 100 else f"{mb:.3g}"
    return f"{text} MB"


def main_metric(records: Sequence[Record]) -> str | None:
    """Return ``"test_accuracy"``, ``"test_perplexity"``, ``"test_preference_accuracy"`` or
    ``None``, by which key is logged."""
    for key in ("test_accuracy", "test_perplexity", "test_preference_accuracy"):
        if any(r.get(key) is not None for r in records):
            return key
    return None


def plot_curves(
    records: Sequence[Record], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Plot one run's learning curves into a PNG (2×2 layout, see the module docstring).

    If the records hold ``full_model_cum_bytes``, the MB panels' titles compare the bytes
    sent with what full-model FL would have sent, e.g. "adapters: 3.1 MB vs full model: 910 MB".

    Args:
        records: The run's round records (from :func:`fedfm.report.metrics.read_records`).
        path: Where to write the PNG (atomically).
        title: Figure title, e.g. the run name.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> records = read_records("runs/demo/metrics.jsonl")  # doctest: +SKIP
        >>> plot_curves(records, "runs/demo/curves.png", title="demo")  # doctest: +SKIP
    """
    return _save(_figure({"": records}, title=title, mb_note=_bytes_note(records)), path)


def plot_comparison(
    runs: Mapping[str, Sequence[Record]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Plot several runs on one 2×2 figure, one line (colour) per run, legend = run name.

    Args:
        runs: Run name → that run's round records.
        path: Where to write the PNG (atomically).
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return _save(_figure(runs, title=title, mb_note=""), path)


SIMULATED_AXIS = "simulated time (local steps at speed 1.0)"
WALL_AXIS = "server wall-clock seconds (fedfm serve)"


def clock_axis(runs: Mapping[str, Sequence[Record]]) -> str:
    """What ``sim_clock`` measures in these runs: the simulated time of the ``[system]``
    speeds, or (an asynchronous ``fedfm serve`` run, whose records name their
    ``participants``) the server's wall-clock seconds; both when the runs mix them.

    Example:
        >>> clock_axis({"a": [{"sim_clock": 1.0, "participants": ["c0"]}]})
        'server wall-clock seconds (fedfm serve)'
    """
    remote = [any("participants" in r for r in records) for records in runs.values()]
    if all(remote):
        return WALL_AXIS
    if any(remote):
        return f"{SIMULATED_AXIS}; remote runs: wall-clock seconds"
    return SIMULATED_AXIS


def plot_against_clock(
    runs: Mapping[str, Sequence[Record]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Plot several runs' main test metric against their clock (``sim_clock``: the
    ``[system]`` speeds' time units, cumulative, or a remote FedBuff run's wall-clock seconds:
    :func:`clock_axis`), one line per run: asynchronous (FedBuff) and synchronous runs, with
    or without a deadline, on one time axis.

    Args:
        runs: Run name → that run's round records (those without ``sim_clock`` are skipped).
        path: Where to write the PNG (atomically).
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    metric = main_metric([r for records in runs.values() for r in records])
    for i, (name, records) in enumerate(runs.items()):
        if metric:
            _line(ax, records, "sim_clock", metric, label=name, color=f"C{i % 10}")
    label = _LABELS[metric] if metric else "test metric"
    axis = clock_axis(runs)
    ax.set_title(
        f"{label} by {'wall-clock' if axis == WALL_AXIS else 'simulated'} time", fontsize=10
    )
    ax.set_xlabel(axis)
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    _finish_panel(ax, log_y=metric == "test_perplexity")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path)


def _figure(runs: Mapping[str, Sequence[Record]], *, title: str, mb_note: str) -> Figure:
    """Draw every run onto a fresh 2×2 figure and label the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    metric = main_metric([r for records in runs.values() for r in records])
    for i, (name, records) in enumerate(runs.items()):
        _draw_run(axes, records, metric=metric, name=name, color=f"C{i % 10}")
    f1 = metric == "test_accuracy" and any(
        is_finite_number(r.get("test_macro_f1")) for records in runs.values() for r in records
    )
    _label_axes(axes, metric=metric, mb_note=mb_note, single=len(runs) == 1, f1=f1)
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def _draw_run(
    axes: Any, records: Sequence[Record], *, metric: str | None, name: str, color: str
) -> None:
    """Draw one run's four curves (main metric, test loss, dashed train loss)."""
    top_label = name or (_LABELS[metric] if metric else "")
    for col, x_key in enumerate(("round", "cum_bytes")):
        if metric:
            _line(axes[0][col], records, x_key, metric, label=top_label, color=color)
        if metric == "test_accuracy":  # accuracy hides a collapse to one class; macro-F1 not
            _line(axes[0][col], records, x_key, "test_macro_f1", color=color, linestyle=":")
        _line(axes[1][col], records, x_key, "test_loss", label=name or "test", color=color)
        _line(
            axes[1][col],
            records,
            x_key,
            "train_loss",
            label="" if name else "train",
            color=color,
            linestyle="--",
            alpha=0.7,
        )


def _line(ax: Axes, records: Sequence[Record], x_key: str, y_key: str, **style: Any) -> None:
    """Plot ``y_key`` against ``x_key`` over the records that hold finite values of both."""
    xs, ys = _xy(records, x_key, y_key)
    if not xs:
        return
    if x_key == "cum_bytes":
        xs = [x / 1e6 for x in xs]
    marker = "o" if len(xs) <= _MARKER_MAX_POINTS else None
    if not style.get("label"):
        style["label"] = "_nolegend_"
    ax.plot(xs, ys, marker=marker, markersize=3.5, **style)


def _xy(records: Sequence[Record], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """Return the (x, y) pairs of the records where both keys hold finite numbers."""
    pairs = [(r.get(x_key), r.get(y_key)) for r in records]
    kept = [(x, y) for x, y in pairs if is_finite_number(x) and is_finite_number(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def is_finite_number(value: Any) -> TypeGuard[float]:
    """True for a finite int or float (not bool, not ``None``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _label_axes(
    axes: Any, *, metric: str | None, mb_note: str, single: bool, f1: bool = False
) -> None:
    """Set titles, axis labels, scales and legends of the four panels."""
    from matplotlib.ticker import MaxNLocator

    metric_label = _LABELS[metric] if metric else "test metric"
    top_title = "test accuracy (solid) and macro-F1 (dotted)" if f1 else metric_label
    loss_title = "loss (solid: test, dashed: train)"
    mb_suffix = f"\n{mb_note}" if mb_note else ""
    titles = [
        [f"{top_title} by round", f"{top_title} by data sent{mb_suffix}"],
        [f"{loss_title} by round", f"{loss_title} by data sent{mb_suffix}"],
    ]
    for row in range(2):
        for col in range(2):
            ax = axes[row][col]
            ax.set_title(titles[row][col], fontsize=10)
            ax.set_xlabel("round" if col == 0 else "cumulative data sent, down + up (MB)")
            ax.set_ylabel(metric_label if row == 0 else "loss")
            ax.grid(True, alpha=0.3)
            _finish_panel(ax, log_y=row == 0 and metric == "test_perplexity")
        axes[row][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    # One legend is enough: every panel uses the same colours. A single run needs it only for
    # test vs train loss; a comparison needs it to name the runs.
    candidates = [axes[1][0]] if single else [axes[0][0], axes[1][0]]
    for ax in candidates:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
            break


def _finish_panel(ax: Axes, *, log_y: bool) -> None:
    """Use a log y-axis if asked, or say so when a panel has nothing to show."""
    if not ax.lines:
        ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    elif log_y:
        ax.set_yscale("log")


def _bytes_note(records: Sequence[Record]) -> str:
    """Return "adapters: X MB vs full model: Y MB" from the last record holding both."""
    for r in reversed(records):
        if is_finite_number(r.get("cum_bytes")) and is_finite_number(r.get("full_model_cum_bytes")):
            sent, full = r["cum_bytes"], r["full_model_cum_bytes"]
            return f"adapters: {format_mb(sent)} vs full model: {format_mb(full)}"
    return ""


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically."""
    buf = io.BytesIO()
    # zlib level 1: still lossless, about 7% larger, a third of the encoding time (the
    # default level's encoding was about 0.1 s of every small run's end)
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
    return atomic_write_bytes(path, buf.getvalue())
