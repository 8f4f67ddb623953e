"""Generation scores across clients, and generated examples as a markdown table in the run folder.

Example:
    >>> per_client_scores({0: [1.0, 0.0], 1: [1.0, 1.0]})
    {'mean': 0.75, 'worst10': 0.5}
    >>> rows = [SampleRow("What is 2+2?", "4", "4", "5")]
    >>> write_samples(run_dir, rows)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedfm.io import atomic_write_text
from fedfm.resources.types import Conversation
from fedfm.run_files import GENERATIONS_FILE  # in the run folder

MAX_CELL = 200  # characters kept in a table cell; a longer text is cut with an ellipsis
MISSING = "–"  # a cell with no text (no local-only model in this run)


def client_means(values_by_client: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """Each client's mean per-example score; clients with no examples are left out."""
    return {c: sum(v) / len(v) for c, v in values_by_client.items() if len(v) > 0}


def per_client_scores(values_by_client: Mapping[int, Sequence[float]]) -> dict[str, float]:
    """``{"mean", "worst10"}`` over clients of each client's mean score (higher is better).

    As :func:`fedfm.runtime.simulation.evaluate_clients` does for classification: ``mean`` is
    the unweighted mean over clients, ``worst10`` the mean of the lowest ``ceil(10%)`` of the
    clients (at least one). Clients with no examples are left out; none left gives ``{}``.
    """
    means = sorted(client_means(values_by_client).values())
    if not means:
        return {}
    worst = means[: max(1, math.ceil(0.1 * len(means)))]
    return {"mean": sum(means) / len(means), "worst10": sum(worst) / len(worst)}


@dataclass(frozen=True)
class SampleRow:
    """One generated example: its prompt, the reference response, the global model's
    response and a local-only model's (``None`` when the run has none)."""

    prompt: str
    reference: str
    global_model: str
    local_model: str | None = None


def prompt_text(prompt: Conversation) -> str:
    """A prompt as table text: a lone user message as is, else one ``role: content`` line per
    message."""
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)


def cell(text: str | None, max_chars: int = MAX_CELL) -> str:
    """``text`` as one markdown table cell: cut to ``max_chars`` with an ellipsis, then
    backslashes, ``|``, ``&``, ``<`` and ``>`` escaped and line breaks written as ``<br>``,
    so no generated text can end a cell, a row or the table, or inject HTML."""
    if text is None:
        return MISSING
    text = text.strip()
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    for raw, escaped in (
        ("\\", "\\\\"),
        ("|", "\\|"),
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
    ):
        text = text.replace(raw, escaped)
    return "<br>".join(text.splitlines())


def samples_table(rows: Sequence[SampleRow], *, max_chars: int = MAX_CELL) -> str:
    """A markdown table of ``rows``: prompt, reference, global model, local-only model."""
    lines = [
        "| prompt | reference | global model | local-only model |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.prompt, row.reference, row.global_model, row.local_model)
        lines.append("| " + " | ".join(cell(c, max_chars) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_samples(
    run_dir: str | Path, rows: Sequence[SampleRow], *, heading: str = "Generated examples"
) -> Path:
    """Write ``rows`` as ``generations.md`` in ``run_dir`` (atomically) and return its path."""
    text = f"# {heading}\n\n{samples_table(rows)}"
    return atomic_write_text(Path(run_dir) / GENERATIONS_FILE, text)
