"""Decide which tensors train: LoRA adapters (peft), the task head only, or everything.

After :func:`apply_adapter` the model's trainable tensors (``requires_grad``) are exactly
the federated ``params``; everything else is the frozen backbone shared by all clients.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from fedfm.config import AdapterConfig
from fedfm.errors import ConfigError
from fedfm.resources.types import CAUSAL_LM

# peft calls a transformers API that transformers 5 deprecated; the warning is not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# Names under which task heads live in the models we load (HF sequence classification
# heads are ``classifier`` for BERT-likes and ``score`` for decoder LMs).
HEAD_NAMES = ("classifier", "score", "head")


def default_target_modules(architecture: str) -> list[str]:
    """peft's per-architecture LoRA targets (e.g. bert: query/value; llama: q_proj/v_proj)."""
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(architecture)
    if not targets:
        raise ConfigError(
            f"no default LoRA target modules for architecture '{architecture}'; set "
            f'adapter.target_modules, e.g. adapter.target_modules = ["fc1"]'
        )
    return list(targets)


def find_head(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """The classification head sub-module, if the model has one."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return name, module
    return None


def _set_head_trainable(model: torch.nn.Module, task: str) -> None:
    if task == CAUSAL_LM:
        return  # the LM head is tied to the embeddings: it stays frozen
    head = find_head(model)
    if head is None:
        raise ConfigError(
            f"{type(model).__name__} has no classification head named one of {HEAD_NAMES}"
        )
    for p in head[1].parameters():
        p.requires_grad_(True)


def apply_adapter(
    model: torch.nn.Module, cfg: AdapterConfig, *, architecture: str, task: str
) -> torch.nn.Module:
    """Freeze the backbone and make the adapter (and the task head) trainable.

    Args:
        model: a freshly loaded model (all parameters trainable).
        cfg: the ``[adapter]`` config section.
        architecture: ``model.config.model_type`` (``"bert"``, ``"llama"``) or ``"mlp"``.
        task: ``"classification"`` or ``"causal_lm"``.

    Returns:
        The model to train (a peft model for LoRA, the same object otherwise).
    """
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "head":
        if task == CAUSAL_LM:
            raise ConfigError(
                "adapter.method = 'head' needs a task head, but causal LM has none "
                "(its output layer is tied to the embeddings); use 'lora' or 'full'"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        _set_head_trainable(model, task)
        return model
    targets = list(cfg.target_modules) or default_target_modules(architecture)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=cfg.dropout,
        target_modules=targets,
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"adapter.target_modules = {targets}: {err}") from err
    base = peft_model.get_base_model()
    _set_head_trainable(base, task)
    return peft_model
