"""How a federation looks: client sizes, label histograms and one heterogeneity score.

The heterogeneity score is the size-weighted mean total-variation distance between each
client's label distribution and the pooled label distribution of all clients:

    H = sum_i (n_i / N) * 0.5 * || p_i - p ||_1

It lies in ``[0, 1]``: 0 when every client has the pooled label mix (IID), and
``1 - 1/K`` when K equally sized, equally frequent labels each live on their own clients
(fully label-disjoint). It is ``None`` for label-free datasets (causal LM).

Example:
    >>> import numpy as np
    >>> parts = [np.array([0, 1]), np.array([2, 3])]
    >>> stats = summarize(parts, np.array([0, 0, 1, 1]), ("neg", "pos"))
    >>> stats.heterogeneity
    0.5
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from fedfm.io import atomic_write_bytes

MAX_PLOTTED_CLIENTS = 50  # bars beyond this are unreadable; the title says when capped
_MAX_HIST_LABELS = 20  # label counts shown per table row before eliding


@dataclass(frozen=True)
class FederationStats:
    """Summary of one partition of a training pool among clients.

    Attributes:
        sizes: int64 array ``(num_clients,)`` of examples per client.
        label_hist: int64 array ``(num_clients, num_labels)`` of label counts per client,
            or ``None`` for label-free datasets.
        label_names: class names in id order; empty for label-free datasets.
        heterogeneity: size-weighted mean total-variation distance to the pooled label
            distribution, in ``[0, 1]`` (0 = IID); ``None`` without labels.
        size_cv: coefficient of variation (std / mean) of client sizes.
        client_names: one display name per client.

    Example:
        >>> stats = summarize([np.array([0]), np.array([1, 2])], None, ())
        >>> stats.sizes.tolist(), stats.heterogeneity
        ([1, 2], None)
    """

    sizes: np.ndarray
    label_hist: np.ndarray | None
    label_names: tuple[str, ...]
    heterogeneity: float | None
    size_cv: float
    client_names: tuple[str, ...]

    @property
    def num_clients(self) -> int:
        return len(self.sizes)


def label_histogram(parts: list[np.ndarray], labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Return the int64 ``(num_clients, num_labels)`` matrix of label counts per client."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(
            f"labels must lie in [0, {num_labels}) to match label_names, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    rows = [np.bincount(labels[p], minlength=num_labels) for p in parts]
    return np.array(rows, dtype=np.int64).reshape(len(parts), num_labels)


def heterogeneity(label_hist: np.ndarray) -> float:
    """Size-weighted mean total-variation distance of clients to the pooled label mix.

    Args:
        label_hist: ``(num_clients, num_labels)`` label counts.

    Returns:
        A score in ``[0, 1]``: 0 for identical label mixes, larger for stronger skew.
    """
    sizes = label_hist.sum(axis=1)
    total = sizes.sum()
    if total == 0:
        return 0.0
    pooled = label_hist.sum(axis=0) / total
    mix = label_hist / np.maximum(sizes, 1)[:, None]  # empty clients get weight 0 below
    tv = 0.5 * np.abs(mix - pooled).sum(axis=1)
    return float((sizes * tv).sum() / total)


def _size_cv(sizes: np.ndarray) -> float:
    """Coefficient of variation std / mean (population std); 0 for no or empty clients."""
    mean = sizes.mean() if len(sizes) else 0.0
    return float(sizes.std() / mean) if mean > 0 else 0.0


def summarize(
    parts: list[np.ndarray],
    labels: np.ndarray | None,
    label_names: tuple[str, ...] | list[str],
    client_names: tuple[str, ...] | list[str] | None = None,
) -> FederationStats:
    """Summarise a partition: sizes, label histograms, heterogeneity and size skew.

    Args:
        parts: one index array per client (as returned by a partition method).
        labels: int array ``(n,)`` of class ids of the whole pool, or ``None``.
        label_names: class names in id order; if empty while labels are given, the names
            are the ids ``"0"``, ``"1"``, ... up to the largest label.
        client_names: one name per client; default ``"0"``, ``"1"``, ...

    Returns:
        The :class:`FederationStats` of the partition.
    """
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    names = tuple(client_names) if client_names is not None else tuple(map(str, range(len(parts))))
    if len(names) != len(parts):
        raise ValueError(f"got {len(names)} client_names for {len(parts)} clients")
    hist, het, label_names = None, None, tuple(label_names)
    if labels is not None:
        if not label_names:
            label_names = tuple(map(str, range(int(np.max(labels, initial=-1)) + 1)))
        hist = label_histogram(parts, labels, len(label_names))
        het = heterogeneity(hist)
    return FederationStats(sizes, hist, label_names, het, _size_cv(sizes), names)


def stats_summary(stats: FederationStats) -> str:
    """One line: number of clients, min/median/max size, size CV and heterogeneity."""
    sizes = stats.sizes
    if len(sizes) == 0:
        return "0 clients"
    het = "n/a (no labels)" if stats.heterogeneity is None else f"{stats.heterogeneity:.3f}"
    return (
        f"{len(sizes)} clients · size min {sizes.min()} / median {np.median(sizes):g} / "
        f"max {sizes.max()} (cv {stats.size_cv:.2f}) · heterogeneity {het}"
    )


def _hist_text(counts: np.ndarray) -> str:
    """Label counts as a compact space-separated string, elided after a few labels."""
    shown = " ".join(str(c) for c in counts[:_MAX_HIST_LABELS])
    return shown + (" …" if len(counts) > _MAX_HIST_LABELS else "")


def _dominant(counts: np.ndarray, label_names: tuple[str, ...]) -> str:
    """Share of the most frequent label, with its name, e.g. ``0.82 (sports)``."""
    total = counts.sum()
    if total == 0:
        return "-"
    top = int(np.argmax(counts))
    return f"{counts[top] / total:.2f} ({label_names[top]})"


def stats_table(stats: FederationStats, max_rows: int = 30) -> Table:
    """A rich table: one row per client (size, label counts, dominant label share).

    Args:
        stats: the federation summary.
        max_rows: clients shown; a final row says how many more there are.

    Returns:
        A :class:`rich.table.Table`; print :func:`stats_summary` beside it for totals.
    """
    table = Table(title="Federation")
    table.add_column("client")
    table.add_column("size", justify="right")
    if stats.label_hist is not None:
        table.add_column("labels (" + " ".join(stats.label_names[:_MAX_HIST_LABELS]) + ")")
        table.add_column("dominant", justify="right")
    for i in range(min(stats.num_clients, max_rows)):
        row = [stats.client_names[i], str(stats.sizes[i])]
        if stats.label_hist is not None:
            counts = stats.label_hist[i]
            row += [_hist_text(counts), _dominant(counts, stats.label_names)]
        table.add_row(*row)
    if stats.num_clients > max_rows:
        table.add_row(f"… {stats.num_clients - max_rows} more", *[""] * (len(table.columns) - 1))
    return table


def _label_colors(num_labels: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours for up to 20 labels (tab20), a smooth ramp (viridis) beyond."""
    if num_labels <= 20:
        return [colormaps["tab20"](k) for k in range(num_labels)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 1.0, num_labels)]


def _plot_labels(ax: Axes, stats: FederationStats, shown: int) -> None:
    """Stacked horizontal bars of label counts (or plain sizes) for the first clients."""
    rows = np.arange(shown)
    if stats.label_hist is None:
        ax.barh(rows, stats.sizes[:shown], color="tab:blue")
    else:
        hist, left = stats.label_hist[:shown], np.zeros(shown)
        for k, (name, color) in enumerate(
            zip(stats.label_names, _label_colors(len(stats.label_names)), strict=True)
        ):
            ax.barh(rows, hist[:, k], left=left, color=color, label=name)
            left += hist[:, k]
        if len(stats.label_names) <= _MAX_HIST_LABELS:
            ax.legend(fontsize="x-small", loc="best")
    ax.set_yticks(rows, stats.client_names[:shown], fontsize="x-small")
    ax.invert_yaxis()  # client 0 on top, like the table
    ax.set_xlabel("examples")


def plot_stats(stats: FederationStats, path: str | os.PathLike[str]) -> Path:
    """Save a PNG: label counts per client (left) and the client size histogram (right).

    Args:
        stats: the federation summary.
        path: where to write the PNG; written atomically.

    Returns:
        The path written.
    """
    shown = min(stats.num_clients, MAX_PLOTTED_CLIENTS)
    fig = Figure(figsize=(11, max(3.5, 0.18 * shown + 1.5)))
    FigureCanvasAgg(fig)  # Agg canvas: no display and no pyplot global state needed
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    _plot_labels(left, stats, shown)
    capped = f" (first {shown} of {stats.num_clients})" if shown < stats.num_clients else ""
    what = "label counts" if stats.label_hist is not None else "sizes"
    left.set_title(f"client {what}{capped}")
    right.hist(stats.sizes, bins=min(30, max(1, stats.num_clients)), color="tab:gray")
    right.set_title("size distribution")
    right.set_xlabel("examples")
    right.set_ylabel("clients")
    fig.suptitle(stats_summary(stats), fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())
