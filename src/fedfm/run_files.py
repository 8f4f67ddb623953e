"""A run folder's file names, and the checks on a finished one that ``fedfm eval`` and
``fedfm export`` make before any heavy import (torch, transformers), so a wrong path costs
milliseconds, not seconds. Low in the package: models, reports and the runtime all name
these files.

Example:
    >>> check_can_export(Path("runs/demo"), Path("merged"), overwrite=False)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from fedfm.errors import FedFMError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
OLD_CHECKPOINT_FILE = "checkpoint.pt"  # fedfm before the safetensors checkpoints (pickle)
RUN_ID_FILE = "run_id"
PARAMS_FILE = "adapter.safetensors"  # the final global params (fedfm's format)
ADAPTER_DIR = "adapter"  # a peft adapter folder (lora, ia3)
MODEL_DIR = "model"  # a standalone Hugging Face model folder (head, bitfit, full)
MERGED_FILE = "merged.safetensors"  # FLoRA (reproject off): its rounds merged into the backbone
GENERATIONS_FILE = "generations.md"  # eval.generate: generated examples, a markdown table


def check_can_score(run_dir: Path) -> None:
    """Refuse a folder that is not a finished run with one global model (``fedfm eval``)."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise FedFMError(f"{run_dir} has no {CONFIG_FILE}: is it a fedfm run folder?")
    if (run_dir / PARAMS_FILE).is_file():
        return
    if (run_dir / "clients").is_dir():
        raise FedFMError(
            f"{run_dir} is a personalised run (one model per client in clients/), which has no "
            "single model to score; its client metrics are in metrics.jsonl"
        )
    raise FedFMError(
        f"{run_dir} has no {PARAMS_FILE}: the run has not finished; finish it with "
        f"`fedfm run --resume {run_dir}`"
    )


def check_can_export(run_dir: Path, out: Path, *, overwrite: bool) -> None:
    """Refuse an export with nothing to export, or into a non-empty folder (``fedfm export``)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FedFMError(
            f"--merged {out} exists and is not empty: pick another folder or pass --overwrite"
        )
    if (run_dir / MODEL_DIR / "config.json").is_file():
        return
    if (run_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        return
    raise FedFMError(
        f"{run_dir} has no {ADAPTER_DIR}/ or {MODEL_DIR}/ folder to export: is it a finished "
        "fedfm run? Runs of feature models (mlp), personalised runs and LoRA runs on a "
        "random-init backbone have none (its README.md says why)"
    )
