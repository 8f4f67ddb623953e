"""Numbers and figures that experiment reports share: curves, targets, means and spreads."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedfm.experiments.base import ArmResult
from fedfm.io import atomic_write_bytes

Record = Mapping[str, Any]


def series(
    records: Sequence[Record], key: str, x: str = "round"
) -> tuple[list[float], list[float]]:
    """``(x values, key values)`` over the records that hold a finite ``key``."""
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(float(r[x]))
            ys.append(float(value))
    return xs, ys


def final(records: Sequence[Record], key: str) -> float:
    """The last logged value of ``key`` (NaN when never logged)."""
    _, ys = series(records, key)
    return ys[-1] if ys else float("nan")


def tail_mean(records: Sequence[Record], key: str, n: int = 3) -> float:
    """The mean of the last ``n`` logged values of ``key``: steadier than the last value alone
    when a single-seed curve oscillates (NaN when never logged).

    Example:
        >>> tail_mean([{"round": r, "a": v} for r, v in enumerate([0.0, 0.5, 0.75, 1.0])], "a")
        0.75
    """
    _, ys = series(records, key)
    return float(np.mean(ys[-n:])) if ys else float("nan")


def rounds_to_target(
    records: Sequence[Record], key: str, target: float, *, higher_is_better: bool = True
) -> int | None:
    """The first round (> 0) whose ``key`` reaches ``target``; ``None`` if none does.

    Example:
        >>> rounds_to_target([{"round": 1, "a": 0.5}, {"round": 2, "a": 0.8}], "a", 0.7)
        2
    """
    for x, y in zip(*series(records, key), strict=True):
        if x > 0 and (y >= target if higher_is_better else y <= target):
            return int(x)
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(values: Sequence[float] | float | None, digits: int = 3) -> str:
    """``0.812`` for one value, ``0.812 ± 0.010`` (mean ± std) for several, ``–`` for none."""
    if values is None:
        return "–"
    if isinstance(values, int | float):
        return "–" if not math.isfinite(values) else f"{values:.{digits}f}"
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "–"
    mean, std = mean_std(finite)
    if len(finite) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def group_by(
    results: Sequence[ArmResult], key: Callable[[ArmResult], Any]
) -> dict[Any, list[ArmResult]]:
    """Arms grouped by ``key(arm)``, in first-seen order (seeds of one setting together)."""
    groups: dict[Any, list[ArmResult]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return groups


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def mean_curve(
    runs: Sequence[ArmResult], key: str, x: str = "round"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, mean, min, max)`` of ``key`` over runs, on the x values all runs share."""
    curves = [dict(zip(*series(r.records, key, x), strict=True)) for r in runs]
    shared = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    values = np.array([[c[s] for s in shared] for c in curves]).reshape(len(curves), len(shared))
    if not shared:
        empty = np.array([])
        return empty, empty, empty, empty
    return np.array(shared), values.mean(0), values.min(0), values.max(0)


Panel = tuple[str, Mapping[str, Sequence[ArmResult]]]  # (title, {line label: runs})


def plot_panels(
    panels: Sequence[Panel],
    key: str,
    path: Any,
    *,
    ylabel: str,
    x: str = "round",
    xlabel: str = "round",
    logy: bool = False,
    logx: bool = False,
    ncols: int = 3,
    x_scale: float = 1.0,
) -> None:
    """One axis per panel; one line per label (mean over its runs, min-max band when >1)."""
    if not panels:
        raise ValueError(f"plot_panels needs at least one panel to draw {key} into {path}")
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, lines) in zip(axes, panels, strict=False):
        for label, runs in lines.items():
            xs, mean, lo, hi = mean_curve(runs, key, x)
            if xs.size == 0:
                continue
            xs = xs * x_scale
            (line,) = ax.plot(xs, mean, marker="o" if xs.size <= 25 else None, ms=3, label=label)
            if len(runs) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def plot_frontier(panels: Sequence[Panel], path: Any, *, ncols: int = 2) -> None:
    """Test accuracy against cumulative MB sent (down + up), log x: the cost frontier."""
    plot_panels(
        panels,
        "test_accuracy",
        path,
        ylabel="test accuracy",
        x="cum_bytes",
        xlabel="cumulative MB sent (down + up), log scale",
        x_scale=1e-6,
        logx=True,
        ncols=ncols,
    )
