"""A transformer cut at layer ``L``: the frozen prefix (embeddings and layers ``0..L-1``) run
alone, and the rest (layers ``L..``, final norm, pooler, head) run on the prefix's output.

The prefix's output is the hidden states entering layer ``L``, ``(B, T, hidden)``.
:func:`prefix_states` computes them with the whole model (a hook on layer ``L - 1`` stops the
forward there); :func:`suffix_only` makes ``model(inputs_embeds=h, attention_mask=m)`` skip
the prefix, so that ``h`` enters layer ``L`` unchanged. The suffix builds its attention mask
(bidirectional for an encoder, causal for a decoder) and a decoder its positions
(``0..T-1``, rotary) from the same ``attention_mask`` and sequence length as a full forward
does, so with right-padded batches the two agree (to float rounding).

Supported: BERT-style encoders (``bert``, ``roberta``) and Llama-style decoders (``llama``,
``qwen2``), whose forwards take ``inputs_embeds`` in place of the token embeddings. Nothing
in the module tree changes: the skipped modules' ``forward`` is replaced by a pass-through
on the instance for the duration of :func:`suffix_only`, so tensor names (the federated
params) stay as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fedfm.errors import ConfigError
from fedfm.models.layers import layer_index

ENCODERS = ("bert", "roberta")  # embeddings module replaced by a pass-through of inputs_embeds
DECODERS = ("llama", "qwen2")  # the model itself skips embed_tokens when given inputs_embeds
KEY = "client.prefix_cache"


@dataclass(frozen=True)
class LayerStack:
    """Where a supported model keeps its layers.

    Attributes:
        layers: the transformer layers, lowest first.
        embeddings: the module below them (BERT's ``embeddings``, Llama's ``embed_tokens``).
        pass_embeddings: the embeddings module must be made a pass-through (an encoder adds
            positions inside it); a decoder skips it by itself given ``inputs_embeds``.
        below: name segments of tensors that sit below layer 0.
        hidden_size: the width of the hidden states.
    """

    layers: torch.nn.ModuleList
    embeddings: torch.nn.Module
    pass_embeddings: bool
    below: frozenset[str]
    hidden_size: int

    def prefix_modules(self, split: int) -> list[torch.nn.Module]:
        """The modules the cached states stand for: the embeddings and layers ``0..split-1``."""
        return [self.embeddings, *self.layers[:split]]


def _unwrapped(model: torch.nn.Module) -> Any:
    """The Hugging Face model under a peft wrapper (or ``model`` itself)."""
    get_base_model: Any = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


def model_type(model: torch.nn.Module) -> str:
    """``config.model_type`` of a Hugging Face model (under a peft wrapper), else ``""``."""
    base = _unwrapped(model)
    return str(getattr(getattr(base, "config", None), "model_type", ""))


def layer_stack(model: torch.nn.Module, *, generative: bool) -> LayerStack:
    """The layer stack of ``model`` (a peft wrapper is looked through).

    Raises:
        ConfigError: an architecture the cut is not implemented for, or a decoder trained
            for classification (its head pools the last non-pad token, which it finds from
            ``input_ids``: a cached forward has none).
    """
    kind = model_type(model)
    base = _unwrapped(model)
    if kind in ENCODERS:
        inner: Any = base.base_model  # BertModel / RobertaModel
        return LayerStack(
            inner.encoder.layer, inner.embeddings, True, frozenset({"embeddings"}),
            int(base.config.hidden_size),
        )  # fmt: skip
    if kind in DECODERS and generative:
        inner = base.base_model  # LlamaModel / Qwen2Model
        return LayerStack(
            inner.layers, inner.embed_tokens, False, frozenset({"embed_tokens"}),
            int(base.config.hidden_size),
        )  # fmt: skip
    if kind in DECODERS:
        raise ConfigError(
            f"{KEY} = true with a {kind} classifier: its head pools the last non-pad token, "
            "which it finds from input_ids, and a cached forward has none; set "
            f"{KEY} = false (or train a generative task)"
        )
    shown = kind or type(model).__name__
    raise ConfigError(
        f"{KEY} = true, but model {shown!r} is not one of the architectures the cut is "
        f"implemented for ({', '.join(ENCODERS)} encoders; {', '.join(DECODERS)} decoders): "
        f"set {KEY} = false"
    )


def first_trained_layer(names: Iterable[str], stack: LayerStack) -> int:
    """The lowest layer holding one of ``names`` (trainable tensors); ``len(stack.layers)``
    when none sits in a layer (a head, a pooler, a final norm).

    Raises:
        ConfigError: a tensor below layer 0 (the embeddings) is trained.

    Example:
        >>> stack = LayerStack(torch.nn.ModuleList([torch.nn.Identity()] * 4),
        ...                    torch.nn.Identity(), True, frozenset({"embeddings"}), 8)
        >>> first_trained_layer(["bert.encoder.layer.2.x.lora_A", "classifier.weight"], stack)
        2
        >>> first_trained_layer(["classifier.weight"], stack)
        4
    """
    lowest = len(stack.layers)
    for name in names:
        if stack.below & set(name.split(".")):
            raise ConfigError(
                f"{KEY} = true, but '{name}' trains and sits below the first layer: nothing "
                f"frozen lies below it to cache; set {KEY} = false, or use an adapter.method "
                "that leaves the embeddings frozen ('lora', 'ia3' or 'head')"
            )
        index = layer_index(name)
        if index is not None:
            lowest = min(lowest, index)
    return lowest


class _Stop(Exception):
    """Raised by the hook on layer ``L - 1``: the rest of the forward is not needed."""


def prefix_states(
    model: torch.nn.Module,
    stack: LayerStack,
    split: int,
    batch: dict[str, torch.Tensor],
    *,
    grad: bool = False,
) -> torch.Tensor:
    """The hidden states entering layer ``split`` (``1 <= split <= len(layers)``) for a
    batch of ``input_ids`` and ``attention_mask``: ``(B, T, hidden)``, from the whole model as
    it is (without gradients unless ``grad``: split fine-tuning keeps the prefix's autograd
    graph; call it in eval mode for no dropout), inside :func:`suffix_only` or not."""
    seen: list[torch.Tensor] = []

    def grab(_: torch.nn.Module, __: Any, output: Any) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    installed = _installed(stack, split)
    _remove(stack, split)
    handle = stack.layers[split - 1].register_forward_hook(grab)
    try:
        with contextlib.nullcontext() if grad else torch.no_grad():
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )
    except _Stop:
        pass
    finally:
        handle.remove()
        if installed:
            _install(stack, split)
    return seen[0]


def _pass_hidden(*args: Any, **kwargs: Any) -> Any:
    """A skipped layer: its input hidden states, unchanged."""
    return args[0] if args else kwargs["hidden_states"]


def _pass_embeds(*args: Any, **kwargs: Any) -> Any:
    """A skipped encoder embeddings module: the ``inputs_embeds`` it was given."""
    return kwargs["inputs_embeds"]


def _skipped(stack: LayerStack, split: int) -> list[tuple[torch.nn.Module, Any]]:
    skipped: list[tuple[torch.nn.Module, Any]] = [(m, _pass_hidden) for m in stack.layers[:split]]
    if stack.pass_embeddings:
        skipped.append((stack.embeddings, _pass_embeds))
    return skipped


def _installed(stack: LayerStack, split: int) -> bool:
    return "forward" in stack.layers[split - 1].__dict__


def _install(stack: LayerStack, split: int) -> None:
    for module, forward in _skipped(stack, split):
        module.forward = forward  # an instance attribute: nn.Module.__call__ finds it first


def _remove(stack: LayerStack, split: int) -> None:
    for module, _ in _skipped(stack, split):
        module.__dict__.pop("forward", None)


@contextlib.contextmanager
def suffix_only(stack: LayerStack, split: int) -> Iterator[None]:
    """Within the block, ``model(inputs_embeds=h, attention_mask=m)`` runs only layers
    ``split..`` (and what follows them) on ``h``, the states entering layer ``split``."""
    if _installed(stack, split):  # nested: the outer block removes them
        yield
        return
    _install(stack, split)
    try:
        yield
    finally:
        _remove(stack, split)
