"""The model card of a run: ``runs/<name>/README.md``.

It says what the trained adapter is (base model, data, strategy, results, bytes sent), how to
load it with fedfm, and the exact resolved config that produced it, so the folder can be shared
on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.io import atomic_write_text
from fedfm.report.compare import MISSING, format_metric, format_seconds, markdown_table
from fedfm.report.plots import format_mb

_FRONT_MATTER = "---\ntags:\n- fedfm\n- federated-learning\n- peft\n---\n\n"


def write_model_card(run_dir: str | Path, *, summary: Mapping[str, Any], config_toml: str) -> Path:
    """Write ``README.md`` (a short model card) into the run folder, atomically.

    Args:
        run_dir: The run folder; the card is written as ``run_dir / "README.md"``.
        summary: The run's summary (the content of ``summary.json``); missing keys show as "–".
        config_toml: The resolved config, as written to ``config.toml``.

    Returns:
        The path of the card.

    Example:
        >>> write_model_card(Path("runs/demo"), summary=summary, config_toml=text)  # doctest: +SKIP
        PosixPath('runs/demo/README.md')
    """
    run_dir = Path(run_dir)
    card = model_card_markdown(run_dir, summary=summary, config_toml=config_toml)
    return atomic_write_text(run_dir / "README.md", card)


def model_card_markdown(run_dir: Path, *, summary: Mapping[str, Any], config_toml: str) -> str:
    """Return the model card's markdown (see :func:`write_model_card`)."""
    name = str(summary.get("name") or run_dir.name)
    sections = [
        f"# {name}: a federated adapter trained with fedfm\n",
        _intro(summary),
        _facts_table(summary),
        "## Final metrics\n\n" + _metrics_table(summary),
        _load_section(run_dir, summary),
        "## Files\n\n" + _files_list(curves=(run_dir / "curves.png").is_file()),
        "## Resolved config\n\n" + _code_block(config_toml, "toml"),
    ]
    return _FRONT_MATTER + "\n\n".join(s.rstrip("\n") for s in sections) + "\n"


def _intro(summary: Mapping[str, Any]) -> str:
    """One paragraph saying what was trained, on what, how."""
    return (
        f"The trainable parameters (adapter and task head) of **{_get(summary, 'model')}**, "
        f"fine-tuned for **{_get(summary, 'task')}** on **{_get(summary, 'dataset')}** by "
        f"federated learning with the **{_get(summary, 'strategy')}** strategy over "
        f"{_get(summary, 'rounds_completed')} rounds. The data never left the clients; only "
        "the trainable parameters travelled. The frozen backbone is not part of this folder."
    )


def _facts_table(summary: Mapping[str, Any]) -> str:
    """A two-column table of the run's key facts."""
    facts = [
        ("base model", _get(summary, "model")),
        ("backbone hash", f"`{_get(summary, 'backbone_hash')}`"),
        ("dataset", _get(summary, "dataset")),
        ("task", _get(summary, "task")),
        ("strategy", _get(summary, "strategy")),
        ("rounds", _get(summary, "rounds_completed")),
        ("trainable params", _params_text(summary)),
        ("data sent (down + up)", _bytes_text(summary)),
        ("wall time (s)", format_seconds(summary.get("wall_seconds"))),
    ]
    rows = [{"what": k, "value": v} for k, v in facts]
    return markdown_table(rows, [("what", ""), ("value", "")])


def _metrics_table(summary: Mapping[str, Any]) -> str:
    """The final test/client metrics and the best test metric, formatted."""
    final = summary.get("final")
    values = dict(final) if isinstance(final, Mapping) else {}
    for key in ("best_test_accuracy", "best_test_perplexity"):
        if key in summary:
            values[key] = summary[key]
    if not values:
        return "No evaluation was logged."
    rows = [{"metric": k, "value": format_metric(k, v)} for k, v in values.items()]
    return markdown_table(rows, [("metric", "metric"), ("value", "value")])


def _load_section(run_dir: Path, summary: Mapping[str, Any]) -> str:
    """How to put the adapter back onto the base model with fedfm."""
    code = (
        "from fedfm.models.params import load_params_file\n\n"
        f"model = ...  # build {_get(summary, 'model')} with the same adapter, as in the config\n"
        f'load_params_file(model, "runs/{run_dir.name}/adapter.safetensors")\n'
    )
    return (
        "## Load it\n\n"
        "`adapter.safetensors` holds only the trainable tensors. Build the same base model and "
        "adapter as the config below describes (same backbone, hash "
        f"`{_get(summary, 'backbone_hash')}`), then load the trained values into it "
        "(a model on a different backbone is refused with `BackboneMismatchError`):\n\n"
        + _code_block(code, "python")
    )


def _files_list(*, curves: bool) -> str:
    files = (
        "- `adapter.safetensors`: the trained adapter and task head\n"
        "- `config.toml`: the resolved config (also below)\n"
        "- `metrics.jsonl`: one record per round\n"
        "- `summary.json`: final numbers\n"
    )
    if not curves:  # a run drawn without its plot (an experiment's quick version)
        return files
    return files + "- `curves.png`: learning curves\n\n![learning curves](curves.png)"


def _params_text(summary: Mapping[str, Any]) -> str:
    """E.g. "294,912 of 66,955,010 (0.44%)"."""
    trainable, total = summary.get("trainable_params"), summary.get("total_params")
    if not isinstance(trainable, int):
        return MISSING
    if not isinstance(total, int) or total <= 0:
        return f"{trainable:,}"
    return f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"


def _bytes_text(summary: Mapping[str, Any]) -> str:
    """E.g. "3.1 MB (full-model FL: 910 MB)"."""
    sent, full = summary.get("total_bytes"), summary.get("full_model_total_bytes")
    if not isinstance(sent, (int, float)):
        return MISSING
    text = format_mb(sent)
    return f"{text} (full-model FL: {format_mb(full)})" if isinstance(full, (int, float)) else text


def _code_block(text: str, lang: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _get(summary: Mapping[str, Any], key: str) -> str:
    value = summary.get(key)
    return MISSING if value is None or value == "" else str(value)
