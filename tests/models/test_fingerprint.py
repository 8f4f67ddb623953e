"""The folder digest: cached by size and mtime, renewed when a file changes; and the backbone
hash of models without a folder origin is the same as before folders existed."""

import hashlib
import os
import shutil
from pathlib import Path

import torch

from fedfm import filehash
from fedfm.models.fingerprint import folder_digest
from fedfm.models.params import WeightsOrigin, backbone_hash, mark_weights_origin


def _folder(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model-00001-of-00002.safetensors").write_bytes(b"a" * 1000)
    (root / "model-00002-of-00002.safetensors").write_bytes(b"b" * 1000)
    (root / "model.safetensors.index.json").write_text("{}")
    (root / "README.md").write_text("not part of the model")
    return root


def test_digest_is_cached_by_size_and_mtime(tmp_path: Path, monkeypatch) -> None:
    folder, cache = _folder(tmp_path / "m"), tmp_path / "cache"
    hashed: list[str] = []
    real = filehash._file_sha256
    monkeypatch.setattr(filehash, "_file_sha256", lambda p: hashed.append(p.name) or real(p))
    first = folder_digest(folder, cache=cache)
    assert len(hashed) == 4  # three weight files and config.json; README is not the model
    assert folder_digest(folder, cache=cache) == first and len(hashed) == 4  # all cached

    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(b"c" * 1000)  # same size, new content, new mtime
    os.utime(shard, ns=(1, 1))  # even an mtime set back is a change
    changed = folder_digest(folder, cache=cache)
    assert changed != first and hashed[4:] == [shard.name]

    (folder / "README.md").write_text("edited")
    assert folder_digest(folder, cache=cache) == changed


def test_digest_ignores_the_folders_location(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m")
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "m")
    assert folder_digest(folder, cache=tmp_path / "c1") == folder_digest(
        copy, cache=tmp_path / "c2"
    )


def test_an_unwritable_cache_costs_only_time(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    assert folder_digest(folder, cache=blocked) == folder_digest(folder, cache=tmp_path / "ok")


def _reference_hash(model: torch.nn.Module) -> str:
    """backbone_hash as it was before model folders (registry runs must keep their hash)."""
    digest = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name]
        if isinstance(t, torch.nn.Parameter) and t.requires_grad:
            continue
        t = t.detach().contiguous().cpu()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def test_models_without_a_folder_origin_hash_as_before() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[0].bias.requires_grad_(False)
    model.register_buffer("table", torch.arange(6, dtype=torch.int64).reshape(2, 3))
    assert backbone_hash(model) == _reference_hash(model)


def test_a_zero_dim_buffer_is_hashed() -> None:
    model = torch.nn.BatchNorm1d(3)  # num_batches_tracked is a 0-dim int64
    before = backbone_hash(model)
    model.num_batches_tracked += 1
    assert backbone_hash(model) != before


def test_a_folder_origin_replaces_the_bytes_it_covers() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    for p in model.parameters():
        p.requires_grad_(False)
    mark_weights_origin(model, WeightsOrigin("d1", frozenset({"0.weight", "0.bias"})))
    first = backbone_hash(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # covered by the digest: the files say what it is
    assert backbone_hash(model) == first
    with torch.no_grad():
        model[1].weight.add_(1.0)  # not from the files: hashed byte by byte
    assert backbone_hash(model) != first
    mark_weights_origin(model, WeightsOrigin("d2", frozenset({"0.weight", "0.bias"})))
    assert backbone_hash(model) != first
