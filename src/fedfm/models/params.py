"""Params: the trainable tensors only, the unit that travels between server and clients.

``Params`` is ``dict[str, Tensor]`` keyed by the model's parameter names. The frozen
backbone never travels; it is identified by a content hash that every saved params file
carries, so params are never loaded onto a different backbone by accident.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.errors import BackboneMismatchError, ParamsMismatchError
from fedfm.io import atomic_write_bytes

Params = dict[str, torch.Tensor]


def get_params(model: torch.nn.Module) -> Params:
    """A detached CPU copy of the model's trainable tensors (``requires_grad``), by name."""
    return copy_params(trainable_parameters(model))


def copy_params(live: dict[str, torch.nn.Parameter]) -> Params:
    """A detached CPU copy of ``live`` (from :func:`trainable_parameters`), by name."""
    # clone: a CPU tensor's copy with less dispatch than .to("cpu", copy=True)
    return {name: p.detach().clone() if p.is_cpu else p.detach().cpu() for name, p in live.items()}


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The live trainable ``nn.Parameter`` objects, by name (for optimisers and hooks)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def check_compatible(expected: Params, given: Params, *, what: str = "params") -> None:
    """Raise :class:`ParamsMismatchError` unless names, shapes and dtypes all match."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        raise ParamsMismatchError(
            f"{what} do not match the model's trainable tensors: missing {missing[:5]}, "
            f"unexpected {extra[:5]}. Were they made with the same adapter config?"
        )
    for name, ref in expected.items():
        got = given[name]
        if is_head(name) and got.shape[1:] == ref.shape[1:] and got.shape[:1] != ref.shape[:1]:
            raise ParamsMismatchError(
                f"{what}['{name}'] is a task head for {got.shape[0]} labels, but the model's "
                f"head has {ref.shape[0]} labels: the params were trained on a dataset with "
                f"{got.shape[0]} classes. Build the model with num_labels={got.shape[0]} (the "
                "run's own data.dataset; its labels.json names them), or train a new adapter "
                f"for the {ref.shape[0]} labels"
            )
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise ParamsMismatchError(
                f"{what}['{name}'] has shape {tuple(got.shape)} {got.dtype}; the model expects "
                f"{tuple(ref.shape)} {ref.dtype}. Were they made with the same adapter rank?"
            )


_HEAD_SEGMENTS = frozenset({"classifier", "score", "head"})  # adapters.HEAD_NAMES


def is_head(name: str) -> bool:
    """A task head's tensor (its first dimension is the number of labels)."""
    return bool(_HEAD_SEGMENTS & set(name.split(".")))


@torch.no_grad()
def set_params(
    model: torch.nn.Module, params: Params, live: dict[str, torch.nn.Parameter] | None = None
) -> None:
    """Copy ``params`` into the model's trainable tensors in place (names/shapes checked);
    ``live``: those tensors (:func:`trainable_parameters`), when the caller holds them."""
    if live is None:
        live = trainable_parameters(model)
    if len(params) != len(live) or not all(
        (q := params.get(k)) is not None and q.shape == p.shape and q.dtype == p.dtype
        for k, p in live.items()
    ):  # the same names, shapes and dtypes pass; anything else, check_compatible names
        check_compatible({k: v.detach() for k, v in live.items()}, params)
    for name, p in live.items():
        p.copy_(params[name])


def num_params(params: Params) -> int:
    return sum(t.numel() for t in params.values())


def serialize(params: Params, metadata: dict[str, str] | None = None) -> bytes:
    """The exact bytes that travel: safetensors of the tensors (contiguous, CPU)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in params.items()}
    return st_save(tensors, metadata=metadata)


def deserialize(data: bytes) -> Params:
    return dict(st_load(data))


_SIZE_BY_SIGNATURE: dict[tuple[tuple[str, torch.dtype, tuple[int, ...]], ...], int] = {}


def payload_bytes(params: Params) -> int:
    """Size in bytes of ``params`` serialised as it would travel (safetensors).

    Exact: the size depends only on the names, dtypes and shapes, so it is measured by
    serialising once per such signature and remembered (counting bytes is on the hot path).
    """
    signature = tuple((k, v.dtype, tuple(v.shape)) for k, v in params.items())
    if signature not in _SIZE_BY_SIGNATURE:
        _SIZE_BY_SIGNATURE[signature] = len(serialize(params))
    return _SIZE_BY_SIGNATURE[signature]


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a model's frozen weights were read from, so the backbone hash need not re-read
    them: ``digest`` covers the files' bytes; ``names`` are the state-dict names (before any
    adapter wrapping) whose values came from those files."""

    digest: str
    names: frozenset[str]


ORIGIN_ATTR = "fedfm_weights_origin"  # the loaded model's WeightsOrigin, set by its loader


def mark_weights_origin(model: torch.nn.Module, origin: WeightsOrigin) -> None:
    """Remember on ``model`` where its weights came from (see :func:`backbone_hash`)."""
    object.__setattr__(model, ORIGIN_ATTR, origin)


def backbone_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the frozen tensors' names, shapes, dtypes and bytes (first 16 hex chars).

    Trainable tensors are excluded, so the hash is the same before and after training and
    for every client; it changes if any frozen weight differs.

    A model loaded from a folder carries a :class:`WeightsOrigin` (:func:`mark_weights_origin`;
    peft wrappers pass the attribute through): its digest of the weight files enters the
    hash, and a frozen tensor read from those files enters by name, shape and dtype only, so
    a large folder is not re-hashed every run. Everything else (adapter tensors, buffers, a
    random-init pooler) is hashed byte by byte as for every other model.
    """
    digest = hashlib.sha256()
    origin = getattr(model, ORIGIN_ATTR, None)
    names: frozenset[str] = frozenset()
    if isinstance(origin, WeightsOrigin):
        digest.update(f"weights|{origin.digest}|".encode())
        names = origin.names
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name]
        if isinstance(t, torch.nn.Parameter) and t.requires_grad:
            continue
        if names and _unwrapped(name) in names:
            digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            continue
        t = t.detach().contiguous().cpu()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        flat = t.reshape(-1)  # a 0-dim tensor (a step counter) cannot be viewed as bytes
        digest.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def _unwrapped(name: str) -> str:
    """A peft-wrapped parameter's name in the model before wrapping."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def full_model_bytes(model: torch.nn.Module) -> int:
    """Exact safetensors size of the whole model: what full-model FL would send each way.

    Tied tensors (one storage under two names) are counted once, as safetensors stores them.
    """
    unique: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        unique[name] = t
    return payload_bytes(unique)


def save_params_file(path: str | Path, params: Params, *, backbone: str, **meta: str) -> Path:
    """Save params as safetensors with the backbone hash in the metadata (atomic write)."""
    metadata = {"fedfm_backbone_hash": backbone, **{k: str(v) for k, v in meta.items()}}
    return atomic_write_bytes(path, serialize(params, metadata))


def load_params_file(
    model: torch.nn.Module, path: str | Path, *, backbone: str | None = None
) -> Params:
    """Load params saved by :func:`save_params_file` into ``model``.

    Refuses (``BackboneMismatchError``) when the file was made on a different frozen
    backbone than ``model``'s. Pass ``backbone`` to skip recomputing the model's hash.
    """
    data = Path(path).read_bytes()
    from safetensors import safe_open  # local: only needed for metadata

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    saved = metadata.get("fedfm_backbone_hash")
    actual = backbone or backbone_hash(model)
    if saved != actual:
        raise BackboneMismatchError(
            f"'{path}' was trained on backbone {saved}, but the loaded model's backbone is "
            f"{actual}. Load the same model (name and pretrained flag) the params were made with."
        )
    params = deserialize(data)
    set_params(model, params)
    return params
