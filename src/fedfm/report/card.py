"""The model card of a run: ``runs/<name>/README.md``.

It says what the trained adapter is (base model, data, strategy, results, bytes sent), how to
load it in a few lines of plain Hugging Face code (peft + transformers, no fedfm) or with fedfm,
and the exact resolved config that produced it, so the folder can be shared on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.io import atomic_write_text
from fedfm.models.export import ADAPTER_DIR, LABELS_FILE, MODEL_DIR, Export
from fedfm.report.compare import MISSING, format_metric, format_seconds, markdown_table
from fedfm.report.plots import format_mb
from fedfm.resources.types import is_generative
from fedfm.run_files import GENERATIONS_FILE, MERGED_FILE

_FRONT_MATTER = "---\ntags:\n- fedfm\n- federated-learning\n- peft\n---\n\n"


def write_model_card(
    run_dir: str | Path,
    *,
    summary: Mapping[str, Any],
    config_toml: str,
    export: Export | None = None,
) -> Path:
    """Write ``README.md`` (a short model card) into the run folder, atomically.

    Args:
        run_dir: The run folder; the card is written as ``run_dir / "README.md"``.
        summary: The run's summary (the content of ``summary.json``); missing keys show as "–".
        config_toml: The resolved config, as written to ``config.toml``.
        export: What the run wrote in the Hugging Face formats; the card's load snippet
            uses it (``None``: only fedfm's own ``adapter.safetensors``).

    Returns:
        The path of the card.

    Example:
        >>> write_model_card(Path("runs/demo"), summary=summary, config_toml=text)  # doctest: +SKIP
        PosixPath('runs/demo/README.md')
    """
    run_dir = Path(run_dir)
    card = model_card_markdown(run_dir, summary=summary, config_toml=config_toml, export=export)
    return atomic_write_text(run_dir / "README.md", card)


def model_card_markdown(
    run_dir: Path, *, summary: Mapping[str, Any], config_toml: str, export: Export | None = None
) -> str:
    """Return the model card's markdown (see :func:`write_model_card`)."""
    name = str(summary.get("name") or run_dir.name)
    sections = [
        f"# {name}: a federated adapter trained with fedfm\n",
        _intro(summary),
        _facts_table(summary),
        "## Final metrics\n\n" + _metrics_table(summary),
        _load_section(run_dir, summary, export),
        "## Files\n\n" + _files_list(run_dir, export, curves=(run_dir / "curves.png").is_file()),
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


HF_LOAD_HEADING = "## Load it with Hugging Face"  # the first python block below it runs as is


def _load_section(run_dir: Path, summary: Mapping[str, Any], export: Export | None) -> str:
    """How to load the result: plain Hugging Face code when there is an export, and fedfm."""
    run = run_dir.resolve()
    fedfm_part = _fedfm_load(run, summary)
    if export is None or export.folder is None:
        why = f": {export.note}" if export is not None and export.note else ""
        return f"## Load it\n\nThis run has no Hugging Face export{why}.\n\n" + fedfm_part
    if export.kind == "peft":
        code = _peft_snippet(export)
        what = (
            f"`{ADAPTER_DIR}/` is a peft adapter folder (adapter, task head, tokenizer) for the "
            f"base model at `{export.base}`. With `peft` and `transformers` only:"
        )
    else:
        code = _model_snippet(export)
        what = (
            f"`{MODEL_DIR}/` is a standalone Hugging Face model folder (all weights, tokenizer, "
            "label names). With `transformers` only:"
        )
    pipe = "text-generation" if is_generative(export.task) else "text-classification"
    parts = [
        f"{HF_LOAD_HEADING}\n\n{what}\n\n" + _code_block(code, "python"),
        f"`fedfm export {run} --merged DIR` writes one merged, standalone folder that "
        f'`transformers.pipeline("{pipe}", model=DIR)` loads; `fedfm eval {run}` scores the '
        "run again (`--data FILE` on new data).",
    ]
    if export.note:
        parts.append(export.note[0].upper() + export.note[1:] + ".")
    return "\n\n".join(parts) + "\n\n" + fedfm_part


def _peft_snippet(export: Export) -> str:
    causal = is_generative(export.task)
    auto = "AutoModelForCausalLM" if causal else "AutoModelForSequenceClassification"
    labels = "" if causal else f"id2label={dict(enumerate(export.label_names))!r}, "
    folder = _literal(export.folder)
    return (
        "from peft import PeftModel\n"
        f"from transformers import {auto}, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({folder})\n"
        f"base = {auto}.from_pretrained({_literal(export.base)}, {labels}"
        f"pad_token_id=tokenizer.pad_token_id, dtype={_literal(export.dtype)})\n"
        f"model = PeftModel.from_pretrained(base, {folder})\n"
    )


def _model_snippet(export: Export) -> str:
    causal = is_generative(export.task)
    auto = "AutoModelForCausalLM" if causal else "AutoModelForSequenceClassification"
    folder = _literal(export.folder)
    return (
        f"from transformers import {auto}, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({folder})\n"
        f"model = {auto}.from_pretrained({folder}, dtype={_literal(export.dtype)})\n"
    )


def _literal(value: object) -> str:
    """A Python string literal of ``value`` (a path with quotes or backslashes stays valid)."""
    return json.dumps(str(value))


def _fedfm_load(run: Path, summary: Mapping[str, Any]) -> str:
    """fedfm's own way: rebuild the job from the config and load ``adapter.safetensors``."""
    code = (
        "from fedfm.config import load_config\n"
        "from fedfm.models.params import load_params_file\n"
        "from fedfm.runtime.job import build_job\n\n"
        f"job = build_job(load_config({_literal(run / 'config.toml')}))\n"
        f"load_params_file(job.model, {_literal(run / 'adapter.safetensors')}, "
        "backbone=job.backbone)\n"
    )
    merged = ""
    if (run / MERGED_FILE).is_file():
        merged = (
            f" This FLoRA run also merged its rounds into the frozen weights: add "
            f"`{MERGED_FILE}` (already scaled) to them after loading, as `fedfm eval` does."
        )
    return (
        "### With fedfm\n\n"
        "`adapter.safetensors` holds only the trainable tensors. Build the same base model and "
        "adapter from the config below (same backbone, hash "
        f"`{_get(summary, 'backbone_hash')}`), then load the trained values into it "
        "(a model on a different backbone is refused with `BackboneMismatchError`; a "
        f"personalised run has one file per client in `clients/` instead):{merged}\n\n"
        + _code_block(code, "python")
    )


def _files_list(run_dir: Path, export: Export | None, *, curves: bool) -> str:
    files = "- `adapter.safetensors`: the trained adapter and task head (fedfm's format)\n"
    if export is not None and export.kind == "peft":
        files += f"- `{ADAPTER_DIR}/`: the same as a peft adapter folder, with the tokenizer\n"
    if export is not None and export.kind == "model":
        files += f"- `{MODEL_DIR}/`: the trained model as a Hugging Face folder\n"
    if (run_dir / MERGED_FILE).is_file():
        files += f"- `{MERGED_FILE}`: FLoRA's rounds merged into the frozen weights (scaled)\n"
    if (run_dir / LABELS_FILE).is_file():
        files += f"- `{LABELS_FILE}`: the class names in id order\n"
    if (run_dir / GENERATIONS_FILE).is_file():
        files += (
            f"- `{GENERATIONS_FILE}`: generated examples (prompt, reference, the model's "
            "response; `eval.generate`)\n"
        )
    files += (
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
