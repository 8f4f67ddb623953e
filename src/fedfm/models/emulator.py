"""Offsite tuning's emulator (Xiao, Lin & Han 2023): a view of the one shared model in which
a uniform share of the frozen middle layers is dropped.

A model of ``L`` transformer layers is cut in three: the bottom ``b`` and top ``t`` layers
are the *adapter* layers (their adapter tensors train on the clients), the ``m = L - b - t``
layers ``b..L-t-1`` between them are the frozen *middle* block. The emulator keeps
``n = floor(keep * m + 1/2)`` of the middle layers, the ones at ``b + floor(i * m / n)`` for
``i = 0..n-1`` (a stride of ``m / n`` from the first middle layer), and drops the rest.

Example (``L = 12``, ``b = t = 2``, ``keep = 0.5``): the middle is layers 2-9 (``m = 8``),
``n = 4`` layers are kept, 2, 4, 6 and 8 (every other one), and 3, 5, 7, 9 are dropped; the
emulator runs layers 0, 1 | 2, 4, 6, 8 | 10, 11.

Nothing in the module tree changes: inside :meth:`Emulator.view` a dropped layer's
``forward`` is a pass-through set on the instance (as :mod:`fedfm.models.prefix` does for a
cut prefix) and a kept middle layer may run a distilled copy of itself
(:mod:`fedfm.models.distill`) in its place, so tensor names (the federated params) are those
of the full model. :func:`plug_in` writes an emulator's adapter tensors into the full model,
also from a standalone emulator whose layers are numbered ``0..len(emulator)-1``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedfm.errors import ConfigError
from fedfm.models.layers import layer_index
from fedfm.models.params import Params
from fedfm.models.prefix import DECODERS, ENCODERS, layer_stack, model_type

KEY = "offsite.enabled"
_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")  # as models.layers


@dataclass(frozen=True)
class LayerMap:
    """Which layers of the full model the emulator keeps, by their full-model index.

    Attributes:
        num_layers: ``L``, the full model's transformer layers.
        bottom: the bottom adapter layers ``0..b-1``.
        kept: the middle layers the emulator keeps.
        dropped: the middle layers it drops (a pass-through in :meth:`Emulator.view`).
        top: the top adapter layers ``L-t..L-1``.
    """

    num_layers: int
    bottom: tuple[int, ...]
    kept: tuple[int, ...]
    dropped: tuple[int, ...]
    top: tuple[int, ...]

    @property
    def adapter(self) -> tuple[int, ...]:
        """The layers whose adapter tensors train (bottom and top)."""
        return self.bottom + self.top

    @property
    def middle(self) -> tuple[int, ...]:
        """The frozen middle block of the full model, kept and dropped."""
        return tuple(range(len(self.bottom), self.num_layers - len(self.top)))

    @property
    def emulator(self) -> tuple[int, ...]:
        """The full-model index of each emulator layer, lowest first."""
        return self.bottom + self.kept + self.top

    def as_record(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "adapter": list(self.adapter),
            "kept": list(self.kept),
            "dropped": list(self.dropped),
        }

    def describe(self) -> str:
        """One line for the run's banner."""
        return (
            f"offsite: emulator of {len(self.emulator)} of {self.num_layers} layers; adapter "
            f"layers {_spans(self.bottom)} and {_spans(self.top)}, middle "
            f"{_spans(self.middle)} keeps {_spans(self.kept)}, drops {_spans(self.dropped)}"
        )


def _spans(layers: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in layers) if layers else "none"


def layer_map(num_layers: int, *, bottom: int, top: int, keep: float) -> LayerMap:
    """The emulator's layers (the rule is the module's docstring's).

    Raises:
        ValueError: ``bottom + top >= num_layers`` (no middle to emulate), a negative count,
            or ``keep`` outside ``[0, 1]``.

    Example:
        >>> m = layer_map(12, bottom=2, top=2, keep=0.5)
        >>> m.kept, m.dropped, m.emulator
        ((2, 4, 6, 8), (3, 5, 7, 9), (0, 1, 2, 4, 6, 8, 10, 11))
        >>> layer_map(6, bottom=1, top=1, keep=0.5).kept
        (1, 3)
    """
    if bottom < 0 or top < 0 or bottom + top >= num_layers:
        raise ValueError(
            f"bottom = {bottom} and top = {top} must be >= 0 and leave a middle layer of "
            f"{num_layers}"
        )
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep = {keep!r} must be in [0, 1]")
    first, size = bottom, num_layers - bottom - top
    n = int(keep * size + 0.5)  # round half up: a fraction of a layer is a layer from 1/2 on
    kept = tuple(first + (i * size) // n for i in range(n))
    dropped = tuple(i for i in range(first, first + size) if i not in kept)
    return LayerMap(
        num_layers, tuple(range(bottom)), kept, dropped, tuple(range(num_layers - top, num_layers))
    )


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of ``model`` (a peft wrapper is looked through), lowest first.

    Raises:
        ConfigError: an architecture the emulator is not implemented for.
    """
    kind = model_type(model)
    if kind not in ENCODERS + DECODERS:
        shown = kind or type(model).__name__
        raise ConfigError(
            f"{KEY} = true, but model {shown!r} is not one of the architectures the emulator "
            f"is implemented for ({', '.join(ENCODERS)} encoders; {', '.join(DECODERS)} "
            f"decoders): set {KEY} = false"
        )
    return layer_stack(model, generative=True).layers  # any task: only the layers are read


@dataclass
class Emulator:
    """The emulator view of one model.

    Attributes:
        layers: the model's transformer layers (:func:`transformer_layers`).
        map: which of them the emulator keeps.
        replacements: full-model index -> a module run in place of that kept middle layer
            (a distilled copy, not registered in the model); empty: the layers themselves.

    Example:
        >>> emulator = Emulator(transformer_layers(model), layer_map(6, bottom=1, top=1,
        ...                     keep=0.5))  # doctest: +SKIP
        >>> with emulator.view():  # doctest: +SKIP
        ...     logits = model(**batch).logits   # layers 0, 1, 3, 5 run; 2 and 4 pass through
    """

    layers: torch.nn.ModuleList
    map: LayerMap
    replacements: dict[int, torch.nn.Module] = field(default_factory=dict)
    _active: bool = field(default=False, init=False, repr=False, compare=False)

    @contextlib.contextmanager
    def view(self) -> Iterator[None]:
        """Within the block, the model is the emulator (nested blocks are the outer one's)."""
        if self._active:
            yield
            return
        installed: list[torch.nn.Module] = []
        self._active = True
        try:
            for i in self.map.dropped:
                self.layers[i].forward = _pass_hidden  # instance attribute: __call__ finds it
                installed.append(self.layers[i])
            for i, module in self.replacements.items():
                self.layers[i].forward = module.forward
                installed.append(self.layers[i])
            yield
        finally:
            for module in installed:
                module.__dict__.pop("forward", None)
            self._active = False


def _pass_hidden(*args: Any, **kwargs: Any) -> Any:
    """A dropped layer: its input hidden states, unchanged."""
    return args[0] if args else kwargs["hidden_states"]


def middle_names(names: list[str], lmap: LayerMap) -> list[str]:
    """The names in ``names`` that sit in a middle layer (kept or dropped): adapter tensors
    that must neither train nor travel."""
    middle = set(lmap.middle)
    return [n for n in names if layer_index(n) in middle]


def plug_in(
    model: torch.nn.Module,
    adapters: Mapping[str, torch.Tensor],
    lmap: LayerMap,
    *,
    renumbered: bool = True,
) -> Params:
    """Write an emulator's trained adapter tensors into the full ``model``; return them by
    their full-model names. Every other tensor of ``model`` is left as it was, bit for bit.

    Args:
        adapters: the adapter (and head) tensors trained on the emulator.
        renumbered: ``adapters`` are named as in a standalone emulator, whose layer ``j`` is
            the full model's layer ``lmap.emulator[j]`` (:func:`full_name`); ``False``: they
            carry the full model's names already (the simulator's emulator is a view of the
            full model, so its params are the full model's).

    Raises:
        KeyError: a name the full model does not have.
        ValueError: a tensor that lands in a middle layer (the emulator's middle is frozen),
            or a shape that differs.
    """
    named = dict(model.named_parameters())
    full = {(full_name(n, lmap) if renumbered else n): t for n, t in adapters.items()}
    adapter_layers = set(lmap.adapter)
    with torch.no_grad():
        for name, tensor in full.items():
            index = layer_index(name)
            if index is not None and index not in adapter_layers:
                raise ValueError(f"'{name}' sits in middle layer {index}, which does not train")
            if name not in named:
                raise KeyError(f"the full model has no tensor '{name}'")
            target = named[name]
            if target.shape != tensor.shape:
                raise ValueError(
                    f"'{name}' has shape {tuple(tensor.shape)}; the full model's is "
                    f"{tuple(target.shape)}"
                )
            target.copy_(tensor.to(target.device, target.dtype))
    return full


def full_name(name: str, lmap: LayerMap) -> str:
    """The full model's name of a standalone emulator's tensor: its layer index ``j``
    becomes ``lmap.emulator[j]``.

    Example:
        >>> m = layer_map(6, bottom=1, top=1, keep=0.5)   # emulator layers 0, 1, 3, 5
        >>> full_name("bert.encoder.layer.3.attention.self.query.lora_A.default.weight", m)
        'bert.encoder.layer.5.attention.self.query.lora_A.default.weight'
        >>> full_name("classifier.weight", m)
        'classifier.weight'
    """
    match = _LAYER.search(name)
    if match is None:
        return name
    j = int(match.group(1))
    if j >= len(lmap.emulator):
        raise KeyError(f"'{name}': the emulator has {len(lmap.emulator)} layers, not {j + 1}")
    start, end = match.span(1)
    return f"{name[:start]}{lmap.emulator[j]}{name[end:]}"


def emulator_name(name: str, lmap: LayerMap) -> str:
    """The inverse of :func:`full_name`: a full model's adapter-layer tensor as a standalone
    emulator numbers it.

    Raises:
        KeyError: ``name`` sits in a dropped layer (the emulator has no such layer).
    """
    match = _LAYER.search(name)
    if match is None:
        return name
    i = int(match.group(1))
    if i not in lmap.emulator:
        raise KeyError(f"'{name}' sits in layer {i}, which the emulator drops")
    start, end = match.span(1)
    return f"{name[:start]}{lmap.emulator.index(i)}{name[end:]}"
