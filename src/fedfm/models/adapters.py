"""Decide which tensors train: LoRA or IA3 adapters (peft), biases (BitFit), the task head
only, or everything.

After :func:`apply_adapter` the model's trainable tensors (``requires_grad``) are exactly
the federated ``params``; everything else is the frozen backbone shared by all clients.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from fedfm.config import AdapterConfig
from fedfm.errors import ConfigError
from fedfm.resources.types import is_generative

if TYPE_CHECKING:  # peft (and the transformers it imports) loads only for LoRA and IA3
    from peft import IA3Config, LoraConfig

# peft calls a transformers API that transformers 5 deprecated; the warning is not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# Names under which task heads live in the models we load (HF sequence classification
# heads are ``classifier`` for BERT-likes and ``score`` for decoder LMs).
HEAD_NAMES = ("classifier", "score", "head")


def default_target_modules(
    architecture: str, method: str = "lora", model: torch.nn.Module | None = None
) -> list[str]:
    """peft's per-architecture targets (LoRA on bert: query/value; llama: q_proj/v_proj).

    Raises:
        ConfigError: peft has no default for ``architecture``; names the Linear modules of
            ``model`` (when given) that ``adapter.target_modules`` could list.
    """
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )

    mapping = (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
        if method == "ia3"
        else TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    )
    targets = mapping.get(architecture)
    if not targets:
        found = linear_module_names(model) if model is not None else []
        example = ", ".join(f'"{n}"' for n in (found[:2] or ["fc1"]))
        listing = f"; its Linear modules are {found}" if found else ""
        raise ConfigError(
            f"adapter.target_modules is empty and peft has no default {method} targets for "
            f"architecture '{architecture}'{listing}: set adapter.target_modules = "
            f"[{example}]"
        )
    return list(targets)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's Linear layers (GPT-2's Conv1D too), without
    the task head: the names ``adapter.target_modules`` takes."""
    names: list[str] = []
    for qualified, module in model.named_modules():
        leaf = qualified.rsplit(".", 1)[-1]
        linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if linear and leaf not in names and not set(qualified.split(".")) & set(HEAD_NAMES):
            names.append(leaf)
    return names


def _peft_config(
    cfg: AdapterConfig, architecture: str, model: torch.nn.Module
) -> IA3Config | LoraConfig:
    from peft import IA3Config, LoraConfig
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING

    targets = list(cfg.target_modules) or default_target_modules(architecture, cfg.method, model)
    # GPT-2's Conv1D stores its weight transposed; peft must be told (it warns, then does)
    transposed = any(
        type(m).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
        for name, m in model.named_modules()
    )
    if cfg.method == "ia3":
        feedforward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(architecture, [])
        return IA3Config(
            target_modules=targets,
            feedforward_modules=[m for m in feedforward if m in targets],
            fan_in_fan_out=transposed,
        )
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=transposed,
    )


def find_head(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """The classification head sub-module, if the model has one."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return name, module
    return None


def _set_head_trainable(model: torch.nn.Module, task: str) -> None:
    if is_generative(task):
        return  # the LM head is tied to the embeddings: it stays frozen
    head = find_head(model)
    if head is None:
        raise ConfigError(
            f"{type(model).__name__} has no classification head named one of {HEAD_NAMES}"
        )
    for p in head[1].parameters():
        p.requires_grad_(True)
    _float32_head(head[1])


def _float32_head(head: torch.nn.Module) -> None:
    """Train a head in float32 on a bfloat16/float16 backbone: its tensors are cast up, and
    so are the hidden states that enter it, so the logits (and the loss) are float32.
    A float32 backbone is left untouched."""
    if all(p.dtype == torch.float32 for p in head.parameters()):
        return
    head.float()

    def up(value: Any) -> Any:
        return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

    def to_float32(
        _: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}

    head.register_forward_pre_hook(to_float32, with_kwargs=True)


def apply_adapter(
    model: torch.nn.Module, cfg: AdapterConfig, *, architecture: str, task: str
) -> torch.nn.Module:
    """Freeze the backbone and make the adapter (and the task head) trainable.

    Args:
        model: a freshly loaded model (all parameters trainable).
        cfg: the ``[adapter]`` config section.
        architecture: ``model.config.model_type`` (``"bert"``, ``"llama"``) or ``"mlp"``.
        task: ``"classification"``, or a generative task (``"causal_lm"``,
            ``"instruction"``, ...): a causal LM, whose output layer is not trained.

    Returns:
        The model to train (a peft model for LoRA, the same object otherwise).
    """
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "head":
        if is_generative(task):
            raise ConfigError(
                "adapter.method = 'head' needs a task head, but causal LM has none "
                "(its output layer is tied to the embeddings); use 'lora' or 'full'"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        _set_head_trainable(model, task)
        return model
    if cfg.method == "bitfit":  # Ben Zaken et al., 2022: train only the bias terms
        biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
        if not biases:
            raise ConfigError(
                f"adapter.method = 'bitfit' trains bias terms, but {type(model).__name__} has "
                "none (e.g. llama-style models); use 'lora' or 'ia3'"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        for p in biases:
            p.requires_grad_(True)
        _set_head_trainable(model, task)
        return model
    from peft import get_peft_model

    peft_cfg = _peft_config(cfg, architecture, model)
    try:
        peft_model = get_peft_model(model, peft_cfg)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"adapter.target_modules = {peft_cfg.target_modules}: {err}") from err
    if cfg.freeze_a:  # FFA-LoRA (Sun et al., ICLR 2024): A stays at its seeded init
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    base = peft_model.get_base_model()
    _set_head_trainable(base, task)
    return peft_model


def match_params(names: list[str], patterns: tuple[str, ...], *, field: str) -> frozenset[str]:
    """The param names that ``patterns`` pick: ``"head"`` is the task head (any of
    ``HEAD_NAMES`` as a name segment), any other pattern a fragment of the name
    (``"lora_B"``, ``"layer.5."``).

    Raises:
        ConfigError: a pattern that matches no trainable tensor (naming ``field``).

    Example:
        >>> sorted(match_params(["q.lora_A.w", "q.lora_B.w", "classifier.w"], ("head",),
        ...                     field="strategy.personal"))
        ['classifier.w']
    """
    picked: set[str] = set()
    for pattern in patterns:
        if pattern == "head":
            hits = {n for n in names if set(n.split(".")) & set(HEAD_NAMES)}
        else:
            hits = {n for n in names if pattern in n}
        if not hits:
            raise ConfigError(
                f"{field} = {list(patterns)}: '{pattern}' matches none of the "
                f"{len(names)} trainable tensors (e.g. {names[:2]}); use 'head', 'lora_A', "
                "'lora_B' or a fragment of a trainable tensor's name"
            )
        picked |= hits
    if picked and picked == set(names):
        raise ConfigError(
            f"{field} = {list(patterns)} keeps every trainable tensor local, so nothing is "
            "federated: use strategy.name = 'local' for that, or name fewer tensors"
        )
    return frozenset(picked)
