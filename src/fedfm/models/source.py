"""A model from a local Hugging Face folder: ``model.name = "path/to/folder"``.

The folder is what ``save_pretrained`` writes: ``config.json``, the weights
(``model.safetensors``, shards or ``pytorch_model.bin``) and the tokenizer. Classification
loads it with ``AutoModelForSequenceClassification`` (a fresh head sized to the labels),
causal LM with ``AutoModelForCausalLM``. Every way the folder can be wrong gets one line
naming the path and the fix, raised before the weights load where that is possible; weights
that do not fill the model (missing, unexpected or mis-shaped tensors) are refused instead
of silently initialised at random.

Example:
    >>> loaded = load_folder_model(Path("models/my-llama"), request)  # doctest: +SKIP
    >>> loaded.architecture
    'llama'
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors import SafetensorError

from fedfm.config import ModelConfig
from fedfm.errors import ConfigError
from fedfm.models.fingerprint import folder_digest, weight_files
from fedfm.models.params import WeightsOrigin, mark_weights_origin
from fedfm.resources.models import MODELS, LoadedModel, ModelRequest, unknown_model, with_pad_token
from fedfm.resources.types import CAUSAL_LM, CLASSIFICATION, is_generative

if TYPE_CHECKING:  # transformers is imported only to load a folder: a registry model needn't
    import transformers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HEAD_SEGMENTS = ("classifier", "score")  # where a fresh sequence-classification head lives
_AUTO = {  # the transformers Auto* class for each task
    CLASSIFICATION: "AutoModelForSequenceClassification",
    CAUSAL_LM: "AutoModelForCausalLM",
}


def looks_like_path(name: str) -> bool:
    """Whether ``model.name`` names a folder rather than a registry entry."""
    return "/" in name or "\\" in name or name.startswith((".", "~")) or Path(name).exists()


def check_model_name(cfg: ModelConfig) -> None:
    """Check ``model.name`` cheaply: a registry name, or a folder that holds a model.

    Raises:
        ConfigError: an unknown name that is not a path, or a folder that is not a model.
    """
    if cfg.name in MODELS:
        return
    if not looks_like_path(cfg.name):
        unknown_model(cfg.name)
    check_model_folder(cfg.name, pretrained=cfg.pretrained)


def check_model_folder(name: str, *, pretrained: bool = True) -> Path:
    """The folder ``name`` points to, checked without loading anything heavy.

    Raises:
        ConfigError: no such folder, no ``config.json`` (not a model folder), an unreadable
            ``config.json``, or no weight files while ``pretrained`` is on.
    """
    path = Path(name).expanduser()
    where = f"model.name = '{name}'"
    if not path.exists():
        raise ConfigError(
            f"{where}: no such folder; give a registry model (minilm, smollm2-135m, mlp) or "
            "the path of a Hugging Face model folder (config.json, weights, tokenizer)"
        )
    if not path.is_dir():
        raise ConfigError(
            f"{where} is a file, not a model folder: give the folder that holds config.json"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{where} is not a model folder (no config.json in it): give the folder that "
            "model.save_pretrained(...) wrote"
        )
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{where}: config.json is not valid JSON ({err}); fix or re-save it"
        ) from err
    if pretrained and not weight_files(path):
        raise ConfigError(
            f"{where} holds no weights (model.safetensors or pytorch_model.bin): add them "
            "with model.save_pretrained(...), or set model.pretrained = false for a random init"
        )
    return path


def load_folder_model(path: Path, request: ModelRequest) -> LoadedModel:
    """Load the folder's model for ``request.task`` (random init when not ``pretrained``).

    Raises:
        ConfigError: the folder is not a model, its architecture has no class for the task,
            or its weights do not match its config.
    """
    import transformers

    where = f"model.name = '{path}'"
    path = check_model_folder(str(path), pretrained=request.pretrained)
    trust = request.trust_remote_code
    config = _config(path, where, trust)
    _check_task(config, request.task, where, trust)
    tokenizer = _tokenizer(path, where, trust)
    added_pad = with_pad_token(tokenizer)
    kwargs: dict[str, Any] = {"trust_remote_code": trust}
    if not added_pad:  # a new pad token's id lies beyond the embeddings until they grow
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    if request.task == CLASSIFICATION:
        kwargs["num_labels"] = request.num_labels
    auto = getattr(transformers, _AUTO[CAUSAL_LM if is_generative(request.task) else request.task])
    dtype = DTYPES[request.dtype]
    model: transformers.PreTrainedModel
    if request.pretrained:
        model, info = _from_pretrained(auto, path, where, dtype, kwargs)
        fresh = _check_loading(info, model, where)
        names = frozenset(set(model.state_dict()) - fresh)
        mark_weights_origin(model, WeightsOrigin(folder_digest(path), names))
    else:  # the same architecture at random (seed torch first)
        config = transformers.AutoConfig.from_pretrained(path, **kwargs)
        model = auto.from_config(config, dtype=dtype, trust_remote_code=trust)
    if added_pad:
        _grow_embeddings(model, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id  # GPT-2/Llama classifiers look for it
    model.train()
    return LoadedModel(model, tokenizer, model.config.model_type)


def _config(path: Path, where: str, trust: bool) -> transformers.PretrainedConfig:
    import transformers

    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if "auto_map" in raw and not trust:
        raise ConfigError(
            f"{where}: its config.json runs the folder's own Python code (auto_map "
            f"{sorted(raw['auto_map'])}); set model.trust_remote_code = true if you trust it"
        )
    try:
        return transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as err:  # unknown model_type, missing custom code files
        first = str(err).strip().splitlines()[0][:200]
        raise ConfigError(
            f"{where}: transformers {transformers.__version__} cannot read its config.json "
            f"(model_type {raw.get('model_type')!r}: {first}); fix config.json or upgrade "
            "transformers"
        ) from err


def _has_remote_class(config: transformers.PretrainedConfig, auto: str, trust: bool) -> bool:
    return trust and auto in (getattr(config, "auto_map", None) or {})


def _check_task(config: transformers.PretrainedConfig, task: str, where: str, trust: bool) -> None:
    """Refuse an architecture that has no class for ``task`` (before the weights load)."""
    from transformers.models.auto import modeling_auto

    kind = config.model_type
    if task == CLASSIFICATION:
        known = kind in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
        if not known and not _has_remote_class(config, "AutoModelForSequenceClassification", trust):
            raise ConfigError(
                f"{where} is a '{kind}' model, which transformers has no sequence-"
                "classification class for: use a classifying architecture (bert, roberta, "
                "llama, qwen2, gpt2, ...) or a causal-LM dataset"
            )
        return
    encoder = (
        kind in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and kind not in modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
        and not getattr(config, "is_decoder", False)
    )
    known = kind in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not encoder
    if not known and not _has_remote_class(config, "AutoModelForCausalLM", trust):
        what = "an encoder: it reads text in both directions" if encoder else "not a decoder"
        raise ConfigError(
            f"{where} is a '{kind}' model, {what} and cannot do causal LM (next-token "
            "prediction): use a decoder folder (llama, qwen2, gpt2, ...) or a classification "
            "dataset"
        )


def _tokenizer(path: Path, where: str, trust: bool) -> transformers.PreTrainedTokenizerBase:
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(
            f"{where}: no usable tokenizer in the folder ({str(err).splitlines()[0][:160]}); "
            "save it beside the model with tokenizer.save_pretrained(folder)"
        ) from err


def _from_pretrained(
    auto: Any, path: Path, where: str, dtype: torch.dtype, kwargs: dict[str, Any]
) -> tuple[transformers.PreTrainedModel, dict[str, Any]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return auto.from_pretrained(  # type: ignore[no-any-return]
                path,
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes="num_labels" in kwargs,  # another head size: a fresh head
                **kwargs,
            )
    except (OSError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{where}: its weights do not load into the model its config.json describes "
            f"({type(err).__name__}: {first}); re-save the folder with "
            "model.save_pretrained(...)"
        ) from err


def _check_loading(info: dict[str, Any], model: torch.nn.Module, where: str) -> set[str]:
    """Refuse weights that leave backbone tensors at random init; return the fresh names.

    Only a fresh classification head (``classifier``/``score``) may be missing; a
    ``pooler`` missing (checkpoints saved from a masked-LM) is allowed with a warning.
    Unexpected tensors are allowed outside the backbone (another task's head).
    """
    backbone = getattr(model, "base_model_prefix", "")
    missing = [k for k in info.get("missing_keys", []) if not _is_head(k)]
    pooler = [k for k in missing if "pooler" in k.split(".")]
    missing = [k for k in missing if k not in pooler]
    mismatched = [_key(k) for k in info.get("mismatched_keys", []) if not _is_head(_key(k))]
    unexpected = [
        k
        for k in info.get("unexpected_keys", [])
        if _in_backbone(k, model, backbone) and "pooler" not in k.split(".")
    ]
    for problem, keys in (
        ("misses", missing),
        ("has mis-shaped", mismatched),
        ("has unexpected", unexpected),
    ):
        if keys:
            raise ConfigError(
                f"{where}: its weights do not match its config.json: the checkpoint {problem} "
                f"tensors {sorted(keys)[:4]}{' ...' if len(keys) > 4 else ''} ({len(keys)} in "
                "all); fix config.json (layers, sizes) or re-save the folder with "
                "model.save_pretrained(...)"
            )
    if pooler:
        warnings.warn(
            f"{where}: the checkpoint has no pooler; {type(model).__name__} starts it at "
            "random (frozen unless adapter.method = 'full')",
            stacklevel=3,
        )
    names = set(model.state_dict())
    fresh = {*info.get("missing_keys", []), *map(_key, info.get("mismatched_keys", []))}
    # a report may name a tensor without the backbone prefix ("pooler.dense.weight")
    return {k if k in names else f"{backbone}.{k}" for k in fresh}


def _key(entry: Any) -> str:
    """A mismatched-keys entry is ``(name, saved shape, model shape)`` or a bare name."""
    return str(entry[0]) if isinstance(entry, tuple | list) else str(entry)


def _is_head(name: str) -> bool:
    return name.split(".")[0] in HEAD_SEGMENTS


def _in_backbone(name: str, model: torch.nn.Module, prefix: str) -> bool:
    """Whether a checkpoint tensor name belongs to the backbone (``bert.*``, ``model.*``)."""
    head = name.split(".")[0]
    if head == prefix:
        return True
    base = getattr(model, prefix, None)  # checkpoints of a bare backbone drop the prefix
    return isinstance(base, torch.nn.Module) and hasattr(base, head)


@torch.no_grad()
def _grow_embeddings(model: transformers.PreTrainedModel, size: int) -> None:
    """Make room for an added pad token, unless the embeddings have spare rows already; new
    rows are the mean of the others (no randomness: every client gets the same backbone)."""
    old = int(cast(torch.Tensor, model.get_input_embeddings().weight).shape[0])
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and len(weight) == size:
            weight[old:] = weight[:old].mean(0)
