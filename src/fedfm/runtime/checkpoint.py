"""Checkpoints: one safetensors file, its manifest in the header, checked before it is trusted.

``run_dir/checkpoint.safetensors`` holds every tensor of the server's state, named by group::

    global/<param>              the global params
    strategy/<key>/<param>      the strategy's state (server optimiser moments, FLoRA's stack)
    client/<id>/<param>         a client's strategy state (SCAFFOLD's control variate)
    personal/<id>/<param>       a client's personal tensors (strategy.personal)
    pipeline/<id>/<param>       a client's pipeline state (compression's error feedback)
    feature/<name>/<key>        an optional feature's tensors (asynchronous: updates in flight)
    rng/torch                   torch's RNG state (uint8)

and, in the header's metadata, a JSON manifest: the round, the backbone hash, the run id, the
config fingerprint, the privacy state, the DP-SGD steps, numpy's and python's RNG states, the
tensor names in their order, and a SHA-256 over the manifest and every tensor's name, dtype,
shape and bytes.

Why one file: safetensors' header carries the manifest, so one atomic rename makes a
checkpoint appear whole or not at all; a manifest beside the tensors could disagree with them
after a crash between two renames. Loading reads the safetensors header (JSON) and raw tensor
bytes only, never pickle, so a planted file cannot run code. The checksum catches a damaged
or altered file (not a forged one: anyone can compute a SHA-256); the run id catches a
checkpoint copied from another run, the fingerprint one resumed under another config.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.config import RunConfig, to_dict
from fedfm.errors import FedFMError
from fedfm.io import atomic_write_bytes
from fedfm.models.params import Params
from fedfm.runtime.run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    OLD_CHECKPOINT_FILE,
    read_run_id,
    run_id,
)

FORMAT = "fedfm-checkpoint/2"  # 2: optional features keep their own state
MANIFEST_KEY = "fedfm_checkpoint"  # the manifest (JSON) in the safetensors metadata
CHECKSUM_KEY = "fedfm_sha256"
TORCH_RNG = "rng/torch"
GROUPS = ("strategy", "client", "personal", "pipeline", "feature")  # <group>/<key>/<param>
# what --resume may change: how long, where and how the run goes, not what it trains
RESUMABLE_KEYS = ("name", "rounds", "output_dir", "backend", "device")
RESUMABLE_SECTIONS = ("eval.", "checkpoint.", "remote.", "ray.")


class CheckpointError(FedFMError):
    """A checkpoint that cannot be resumed: damaged, foreign, or made under another config."""


@dataclass
class Checkpoint:
    round: int  # the last completed round
    global_params: Params
    strategy_state: dict[str, Params]
    client_states: dict[int, Params]
    backbone: str
    rng: dict[str, Any]
    personal: dict[int, Params] = field(default_factory=dict)
    pipeline_states: dict[int, Params] = field(default_factory=dict)
    # each active feature's own state, JSON (the adaptive clip norm, DP-SGD steps per client)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    feature_tensors: dict[str, Params] = field(default_factory=dict)  # Feature.tensor_state
    config: dict[str, Any] = field(default_factory=dict)  # fingerprint read back (see below)


def rng_state() -> dict[str, Any]:
    """torch's (a uint8 tensor), numpy's and python's RNG states."""
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, cached = numpy_state
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def config_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The config keys a resume must keep (flat ``section.key -> value``, JSON-ready)."""
    flat: dict[str, Any] = {}

    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(to_dict(cfg), "")
    kept = {
        k: v
        for k, v in flat.items()
        if k not in RESUMABLE_KEYS and not k.startswith(RESUMABLE_SECTIONS)
    }
    return json.loads(json.dumps(kept))  # tuples as lists, as a loaded manifest has them


# ---------------------------------------------------------------- writing


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, *, cfg: RunConfig) -> Path:
    """Write ``run_dir/checkpoint.safetensors`` atomically: a crash leaves the previous one."""
    tensors, groups = _flatten(ckpt)
    manifest = {
        "format": FORMAT,
        "round": ckpt.round,
        "backbone": ckpt.backbone,
        "run_id": run_id(run_dir),
        "config": config_fingerprint(cfg),
        # [key, value] pairs: the manifest's keys are sorted, these dicts keep their order
        "features": [[name, list(state.items())] for name, state in ckpt.features.items()],
        "rng": {"numpy": ckpt.rng["numpy"], "python": ckpt.rng["python"]},
        "groups": groups,
        "tensors": list(tensors),
    }
    text = json.dumps(manifest, sort_keys=True)
    metadata = {MANIFEST_KEY: text, CHECKSUM_KEY: _checksum(text, tensors)}
    return atomic_write_bytes(run_dir / CHECKPOINT_FILE, st_save(tensors, metadata=metadata))


def _flatten(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Every tensor under its group name, in order, plus each group's keys (kept even when
    a key holds no tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def put(name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().contiguous().cpu()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors that share memory: store a copy
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor

    for name, tensor in ckpt.global_params.items():
        put(f"global/{name}", tensor)
    nested: dict[str, dict[Any, Params]] = {
        "strategy": ckpt.strategy_state,
        "client": ckpt.client_states,
        "personal": ckpt.personal,
        "pipeline": ckpt.pipeline_states,
        "feature": ckpt.feature_tensors,
    }
    groups: dict[str, list[str]] = {}
    for group in GROUPS:
        groups[group] = [str(key) for key in nested[group]]
        for key, params in nested[group].items():
            if "/" in str(key):
                raise ValueError(f"checkpoint {group} key {key!r} must not contain '/'")
            for name, tensor in params.items():
                put(f"{group}/{key}/{name}", tensor)
    put(TORCH_RNG, ckpt.rng["torch"])
    return tensors, groups


def _checksum(manifest: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(manifest.encode("utf-8"))
    for name, tensor in tensors.items():
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


# ---------------------------------------------------------------- reading


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read and check ``run_dir/checkpoint.safetensors``.

    Refuses (:class:`CheckpointError`, one line naming the file and what to do) a file that
    is missing, empty, truncated, not a checkpoint, fails its checksum, or belongs to another
    run (run id). :func:`check_config` then compares the config it was written under.
    """
    path = run_dir / CHECKPOINT_FILE
    restart = f"start the run again with `fedfm run {run_dir / CONFIG_FILE} --overwrite`"
    if not path.is_file():
        if (run_dir / OLD_CHECKPOINT_FILE).exists():
            raise CheckpointError(
                f"{run_dir / OLD_CHECKPOINT_FILE} is from an older fedfm version (pickle) and "
                f"cannot be resumed: {restart}"
            )
        raise CheckpointError(
            f"{run_dir} has no {CHECKPOINT_FILE}: nothing to resume. Checkpoints are written "
            "every checkpoint.every rounds; run without --resume to start afresh."
        )
    manifest, tensors = _read(path, restart)
    try:
        _check_run_id(path, manifest, restart)
        return _unflatten(manifest, tensors)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path} has a malformed manifest ({err!r}): {restart}") from None


def _check_run_id(path: Path, manifest: dict[str, Any], restart: str) -> None:
    """Refuse a checkpoint of another run: its run id is not the folder's."""
    saved_id, folder_id = manifest["run_id"], read_run_id(path.parent)
    if saved_id != folder_id:
        kept = f"is run {folder_id}" if folder_id else "has no run_id file"
        raise CheckpointError(
            f"{path} belongs to run {saved_id}, but {path.parent} {kept}: the checkpoint was "
            f"copied from another run. Put back this run's own checkpoint, or {restart}"
        )


def _read(path: Path, restart: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The manifest and tensors of ``path``, checked against their checksum."""
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path} is empty (0 bytes): it cannot be resumed; {restart}")
    try:
        tensors = st_load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        metadata = header.get("__metadata__") or {}
        text, checksum = metadata[MANIFEST_KEY], metadata[CHECKSUM_KEY]
        manifest = json.loads(text)
    except Exception as err:  # noqa: BLE001 (safetensors raises its own and builtin errors)
        reason = f"{type(err).__name__}: {err}".replace("\n", " ")
        raise CheckpointError(
            f"{path} is not a readable fedfm checkpoint (truncated or damaged? {reason}): it "
            f"cannot be resumed; {restart}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CheckpointError(
            f"{path} has format {found!r}, not {FORMAT!r}: it cannot be resumed; {restart}"
        )
    order = manifest.get("tensors")
    if not isinstance(order, list) or sorted(order) != sorted(tensors):
        raise CheckpointError(f"{path}: its manifest does not list its tensors; {restart}")
    ordered = {name: tensors[name] for name in order}
    if _checksum(text, ordered) != checksum:
        raise CheckpointError(
            f"{path} fails its SHA-256 check: the file was damaged or altered after it was "
            f"written, and cannot be resumed. Put back an intact copy, or {restart}"
        )
    return manifest, ordered


def check_config(ckpt: Checkpoint, cfg: RunConfig, path: Path) -> None:
    """Refuse to resume ``ckpt`` (read from ``path``) under a config that differs from the
    one it was written under in a key a resume must keep.

    Compare the job's config (``job.cfg``: a dataset file's task and label names filled
    in), which is what :func:`save_checkpoint` is given. Keys only one side knows (another
    fedfm version's) are not compared.
    """
    saved, now = ckpt.config, config_fingerprint(cfg)
    changed = [k for k in saved if k in now and saved[k] != now[k]]
    if not changed:
        return
    shown = "; ".join(f"{k} = {saved[k]!r} there, {now[k]!r} now" for k in changed[:3])
    more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
    raise CheckpointError(
        f"{path} was written under another config: {shown}{more}. Resume with the run's own "
        "config; only rounds, eval.*, checkpoint.*, device, backend, remote.* and ray.* may "
        "change on --resume"
    )


def _unflatten(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Checkpoint:
    nested: dict[str, dict[str, Params]] = {  # "feature" is absent from older checkpoints
        group: {str(key): {} for key in manifest["groups"].get(group, [])} for group in GROUPS
    }
    global_params: Params = {}
    for name, tensor in tensors.items():
        if name == TORCH_RNG:
            continue
        group, _, rest = name.partition("/")
        if group == "global":
            global_params[rest] = tensor
        else:
            key, _, param = rest.partition("/")
            nested[group][key][param] = tensor

    def by_id(group: str) -> dict[int, Params]:
        return {int(k): v for k, v in nested[group].items()}

    numpy_state, python_state = manifest["rng"]["numpy"], manifest["rng"]["python"]
    return Checkpoint(
        round=int(manifest["round"]),
        global_params=global_params,
        strategy_state=nested["strategy"],
        client_states=by_id("client"),
        backbone=str(manifest["backbone"]),
        rng={"torch": tensors[TORCH_RNG], "numpy": numpy_state, "python": python_state},
        personal=by_id("personal"),
        pipeline_states=by_id("pipeline"),
        features={str(name): dict(state) for name, state in manifest["features"]},
        feature_tensors=nested["feature"],
        config=dict(manifest["config"]),
    )
