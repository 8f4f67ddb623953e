"""A run's result in the Hugging Face formats, loadable without fedfm.

At the end of a run, next to fedfm's own ``adapter.safetensors``, the run folder gets:

- ``labels.json``: the class names in id order (classification).
- ``adapter/`` (``adapter.method`` lora or ia3): a peft adapter folder (``adapter_config.json``,
  ``adapter_model.safetensors`` with the task head as peft's ``modules_to_save``, and the
  tokenizer) whose ``base_model_name_or_path`` is the base model's local folder, so plain
  ``PeftModel.from_pretrained(AutoModelFor...(base), RUN/adapter)`` restores the result.
- ``model/`` (head, bitfit, full): a standalone Hugging Face model folder with the trained
  tensors in place, ``id2label`` and the tokenizer.

FLoRA without re-projection (``strategy.reproject = false``) merges every round into the
frozen weights; that sum is folded into the LoRA factors exactly (a truncated SVD at the
delta's numerical rank, per module, through peft's ``rank_pattern``), so the adapter folder
on the untouched base model is the run's model.

There is no export for feature models (``mlp``), personalised runs (no single model) and a
LoRA/IA3 run on a random-init backbone (no folder holds that backbone): :class:`Export`
says why, for the model card.

:func:`export_merged` (``fedfm export RUN --merged DIR``) writes one standalone folder that
``transformers.pipeline`` loads.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedfm.errors import FedFMError
from fedfm.io import atomic_write_json
from fedfm.models.lora import factorize
from fedfm.models.params import Params
from fedfm.resources.types import is_generative
from fedfm.run_files import ADAPTER_DIR, MODEL_DIR, check_can_export

LABELS_FILE = "labels.json"  # class names in id order
PEFT_METHODS = ("lora", "ia3")

# peft calls a transformers API that transformers 5 deprecated; the warning is not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
PEFT_CAUSAL_LM = "CAUSAL_LM"  # peft's task type of every generative task


@dataclass(frozen=True)
class Export:
    """What a run folder holds in the Hugging Face formats (the model card explains it).

    Attributes:
        kind: ``"peft"`` (``folder`` is a peft adapter folder on ``base``), ``"model"``
            (``folder`` is a standalone model folder) or ``"none"`` (``note`` says why).
        task: ``"classification"`` or a generative task (``"causal_lm"``, ``"instruction"``).
        folder: the absolute folder written, or ``None``.
        base: the base model's absolute local folder (``"peft"`` only).
        label_names: class names in id order (empty for causal LM).
        note: why nothing was written, or what was folded in (FLoRA's merged rounds).
        dtype: the backbone's dtype as ``from_pretrained(dtype=...)`` takes it.
    """

    kind: str
    task: str
    folder: Path | None = None
    base: Path | None = None
    label_names: tuple[str, ...] = ()
    note: str = ""
    dtype: str = "float32"


def label_kwargs(label_names: Sequence[str]) -> dict[str, Any]:
    """``id2label`` / ``label2id`` for a Hugging Face config (``{}`` without labels)."""
    if not label_names:
        return {}
    return {
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def write_labels(run_dir: Path, label_names: Sequence[str]) -> Path:
    """Save the class names in id order as ``run_dir/labels.json`` (a JSON list)."""
    path = run_dir / LABELS_FILE
    atomic_write_json(path, list(label_names))
    return path


def read_labels(run_dir: Path) -> tuple[str, ...] | None:
    """The run's class names from ``labels.json``, or ``None`` if it has none."""
    path = Path(run_dir) / LABELS_FILE
    return tuple(json.loads(path.read_text())) if path.is_file() else None


def export_run(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    method: str,
    task: str,
    label_names: Sequence[str],
    pretrained: bool = True,
    personalized: bool = False,
    backbone_delta: Params | None = None,
    lora_scale: float = 1.0,
) -> Export:
    """Write the run's result in the Hugging Face formats (see the module docstring).

    Args:
        run_dir: the run folder.
        model: the trained model with the final global params in place (a peft model for
            lora and ia3; the frozen weights still the base model's own).
        tokenizer: its tokenizer (``None`` for feature models).
        method: ``adapter.method``.
        task: ``"classification"`` or a generative task (``"causal_lm"``, ``"instruction"``).
        label_names: class names in id order (written to ``labels.json``).
        pretrained: ``model.pretrained``: ``False`` means no folder holds the backbone.
        personalized: every client keeps its own params: there is no single model.
        backbone_delta: FLoRA's merged rounds (frozen weight name -> dense sum), folded in.
        lora_scale: ``alpha / rank``, the scale of ``backbone_delta`` as of LoRA's products.

    Returns:
        What was written, for the model card.
    """
    run_dir = Path(run_dir).resolve()
    labels = tuple(label_names)
    if labels:
        write_labels(run_dir, labels)
    none = Export("none", task, label_names=labels)
    if personalized:
        note = "every client keeps its own params (`clients/ID.safetensors`): no single model"
        return _with_note(none, note)
    if tokenizer is None:
        note = "this model is not a Hugging Face model: load `adapter.safetensors` with fedfm"
        return _with_note(none, note)
    if method not in PEFT_METHODS:
        folder = _write_model_folder(run_dir / MODEL_DIR, model, tokenizer, labels)
        return Export("model", task, folder=folder, label_names=labels, dtype=_dtype(model))
    base = _base_dir(model)
    if not pretrained or base is None:
        note = (
            "the backbone is a random init (model.pretrained = false) that no model folder "
            "holds: score the run with `fedfm eval`"
            if not pretrained
            else "the base model was not loaded from a local folder (config.json) that an "
            "adapter could name: score the run with `fedfm eval`"
        )
        return _with_note(none, note)
    if _vocab_grew(model, base):
        note = (
            "the tokenizer gained a pad token that the base model's embeddings lack, so an "
            "adapter on the base folder would not match: score the run with `fedfm eval`, or "
            "train with a tokenizer that has a pad or eos token"
        )
        return _with_note(none, note)
    folder = run_dir / ADAPTER_DIR
    note = _write_adapter_folder(
        folder, model, tokenizer, base=base, task=task, delta=backbone_delta or {}, scale=lora_scale
    )
    return Export(
        "peft", task, folder=folder, base=base, label_names=labels, note=note, dtype=_dtype(model)
    )


def _with_note(export: Export, note: str) -> Export:
    return Export(export.kind, export.task, label_names=export.label_names, note=note)


def _dtype(model: Any) -> str:
    """The backbone's dtype (its input embeddings'), e.g. ``"float32"``."""
    return str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")


def _base_dir(model: Any) -> Path | None:
    """The local folder the base model was loaded from (``config._name_or_path``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(base, "name_or_path", "") or ""
    path = Path(name)
    return path.resolve() if name and (path / "config.json").is_file() else None


def _vocab_grew(model: Any, base: Path) -> bool:
    """Whether the run's embeddings have more rows than the base folder's (a new pad token)."""
    config = json.loads((base / "config.json").read_text())
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    rows = model.get_input_embeddings().weight.shape[0]
    return isinstance(vocab, int) and rows > vocab


def _head(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    from fedfm.models.adapters import find_head

    found = find_head(model)
    if found is None:
        raise FedFMError(f"{type(model).__name__} has no task head to export")
    return found


def _write_adapter_folder(
    folder: Path,
    model: Any,
    tokenizer: Any,
    *,
    base: Path,
    task: str,
    delta: Params,
    scale: float,
) -> str:
    """peft's adapter folder of ``model`` (a ``PeftModel``); returns a note for the card."""
    from peft import get_peft_model_state_dict

    config = copy.deepcopy(model.peft_config["default"])
    config.base_model_name_or_path = str(base)
    config.inference_mode = True
    config.task_type = PEFT_CAUSAL_LM if is_generative(task) else "SEQ_CLS"
    state = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }
    if not is_generative(task):  # the head, under peft's modules_to_save names
        head_name, head = _head(model.get_base_model())
        config.modules_to_save = [head_name]
        for key, tensor in head.state_dict().items():
            state[f"base_model.model.{head_name}.{key}"] = tensor.detach().cpu().contiguous()
    note = ""
    if delta:
        ranks = fold_backbone_delta(config, state, delta, scale=scale)
        note = (
            "FLoRA (strategy.reproject = false) merged every round's exact mean of LoRA "
            "products into the frozen weights; that sum is folded into this adapter's LoRA "
            "factors (a truncated SVD at its numerical rank, through peft's `rank_pattern`: "
            f"rank {_span(ranks)} per module), so the adapter on the untouched base model is "
            "the run's model"
        )

    def write(stage: Path) -> None:
        from safetensors.torch import save_file

        config.save_pretrained(str(stage))
        save_file(state, str(stage / "adapter_model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(stage))

    _replace_folder(folder, write)
    return note


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def fold_backbone_delta(config: Any, state: Params, delta: Params, *, scale: float) -> list[int]:
    """Fold dense additions to frozen weights into a LoRA adapter's state, exactly.

    A peft LoRA module adds ``(alpha_m / r_m) B A`` to its frozen weight ``W``. The run's
    model is ``W + scale * D + scale * B A`` (FLoRA's merged sum ``D``). With ``D``'s
    truncated SVD ``B_D A_D = scale * D`` (float64, kept at ``D``'s numerical rank ``k``) the
    stacked factors ``A_m = [A; A_D]``, ``B_m = [scale * B | B_D]`` with ``alpha_m = r_m =
    r + k`` give exactly that. Updates ``state`` and ``config`` (``rank_pattern``,
    ``alpha_pattern``) in place.

    Args:
        config: the peft ``LoraConfig`` to be saved.
        state: the adapter state in peft's saved names (``<module>.lora_A.weight``).
        delta: frozen weight name (``<module>.base_layer.weight``) -> ``D``.
        scale: LoRA's ``alpha / rank`` of the run.

    Returns:
        The folded rank ``r + k`` of every module.
    """
    ranks = []
    for weight_name, d in sorted(delta.items()):
        module = weight_name.removesuffix(".base_layer.weight")
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        if a_key not in state or b_key not in state:
            raise FedFMError(f"no LoRA factors for {module} to fold the merged delta into")
        scaled = scale * d.detach().cpu().to(torch.float64)
        svals = torch.linalg.svdvals(scaled)
        tol = svals[0] * max(scaled.shape) * torch.finfo(torch.float32).eps
        k = max(1, int((svals > tol).sum()))
        a_d, b_d = factorize(scaled, k)
        a, b = state[a_key], state[b_key]
        state[a_key] = torch.cat([a.to(torch.float64), a_d]).to(a.dtype).contiguous()
        state[b_key] = torch.cat([scale * b.to(torch.float64), b_d], dim=1).to(b.dtype)
        state[b_key] = state[b_key].contiguous()
        rank = a.shape[0] + k
        key = re.escape(module.removeprefix("base_model.model."))
        config.rank_pattern = {**(config.rank_pattern or {}), key: rank}
        config.alpha_pattern = {**(config.alpha_pattern or {}), key: rank}
        ranks.append(rank)
    return ranks


def _write_model_folder(
    folder: Path, model: Any, tokenizer: Any, label_names: tuple[str, ...]
) -> Path:
    """``save_pretrained`` of the whole trained model, with ``id2label`` and the tokenizer."""
    for key, value in label_kwargs(label_names).items():
        setattr(model.config, key, value)

    def write(stage: Path) -> None:
        model.save_pretrained(str(stage))
        tokenizer.save_pretrained(str(stage))

    _replace_folder(folder, write)
    return folder


def _replace_folder(folder: Path, write: Any) -> None:
    """Write a folder into a temporary sibling and move it into place: never half-written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        from fedfm.resources.models import quiet_transformers

        with quiet_transformers():
            write(stage)
        stage.chmod(0o755)  # mkdtemp makes it private; this is an ordinary folder
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(stage, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------- fedfm export


def export_merged(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run's model as one standalone Hugging Face folder (``fedfm export``).

    A peft run's adapter is merged into its base model (peft's ``merge_and_unload``); a
    head/bitfit/full run's ``model/`` folder is copied. The folder has the tokenizer and
    ``id2label``, so ``transformers.pipeline("text-classification", model=out)`` (or
    ``"text-generation"``) loads it.

    Raises:
        FedFMError: ``run_dir`` has neither ``adapter/`` nor ``model/``, or ``out`` is a
            non-empty folder and ``overwrite`` is false.
    """
    run_dir, out = Path(run_dir), Path(out)
    check_can_export(run_dir, out, overwrite=overwrite)
    adapter, model_dir = run_dir / ADAPTER_DIR, run_dir / MODEL_DIR
    if (model_dir / "config.json").is_file():
        _replace_folder(out, lambda stage: shutil.copytree(model_dir, stage, dirs_exist_ok=True))
        return out
    merged, tokenizer = load_adapter_folder(adapter, label_names=read_labels(run_dir) or ())

    def write(stage: Path) -> None:
        merged.save_pretrained(str(stage))
        tokenizer.save_pretrained(str(stage))

    _replace_folder(out, write)
    return out


def load_adapter_folder(
    adapter: Path, *, label_names: Sequence[str] = (), merge: bool = True
) -> tuple[Any, Any]:
    """Plain peft + transformers: the base model with the adapter (merged), and the tokenizer."""
    import transformers
    from peft import PeftConfig, PeftModel

    from fedfm.resources.models import quiet_transformers

    config = PeftConfig.from_pretrained(str(adapter))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(adapter))
    auto = (
        transformers.AutoModelForCausalLM
        if config.task_type == PEFT_CAUSAL_LM
        else transformers.AutoModelForSequenceClassification
    )
    base = config.base_model_name_or_path
    if not base or not (Path(base) / "config.json").is_file():
        raise FedFMError(
            f"{adapter}/adapter_config.json names base model {base!r}, which is not a model "
            "folder on this machine: set base_model_name_or_path to the base model's folder"
        )
    with quiet_transformers():
        model = auto.from_pretrained(
            base,
            dtype=torch.float32,
            pad_token_id=tokenizer.pad_token_id,
            **label_kwargs(label_names),
        )
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    return (peft_model.merge_and_unload() if merge else peft_model), tokenizer
