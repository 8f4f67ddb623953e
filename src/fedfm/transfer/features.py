"""Frozen FM features: every text embedded once by a frozen encoder (mean-pooled last hidden
state over the real tokens, unit length), as sentence-transformers embeds with
all-MiniLM-L6-v2.

Example:
    >>> encoder = load_encoder("minilm")  # doctest: +SKIP
    >>> embed_texts(encoder, ["Who wrote Hamlet?"], max_length=64).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm.errors import ConfigError
from fedfm.io import atomic_write_bytes
from fedfm.resources.models import cache_root, minilm_dir, quiet_transformers


@dataclass(frozen=True)
class Encoder:
    """A frozen encoder and its tokenizer.

    Attributes:
        name: what was asked for (``"minilm"`` or a folder path); it keys the cache.
        model: the bare transformer (``AutoModel``), in eval mode.
        tokenizer: its tokenizer.
    """

    name: str
    model: torch.nn.Module
    tokenizer: Any

    @property
    def dim(self) -> int:
        config: Any = self.model.config
        return int(config.hidden_size)


def load_encoder(name: str) -> Encoder:
    """The frozen encoder ``name``: ``"minilm"`` (the bundled all-MiniLM-L6-v2) or the path of
    a Hugging Face encoder folder (e.g. a tiny BERT in tests).

    Raises:
        ConfigError: ``name`` is neither ``minilm`` nor a folder.
    """
    import transformers

    if name == "minilm":
        path = minilm_dir(what="pft.encoder = 'minilm'")
    else:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"pft.encoder = {name!r} is neither 'minilm' nor a Hugging Face model folder "
                "(no config.json): give 'minilm' or the folder's path"
            )
    with quiet_transformers():
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return Encoder(name, model, tokenizer)


@torch.inference_mode()
def embed_texts(
    encoder: Encoder, texts: Sequence[str], *, max_length: int, batch_size: int = 128
) -> np.ndarray:
    """``(N, hidden)`` float32 unit-length embeddings of ``texts`` (mean over real tokens).

    Texts are embedded in batches sorted by length (little padding), returned in input order;
    the result does not depend on ``batch_size`` beyond float rounding.
    """
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        enc = encoder.tokenizer(
            [texts[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden = encoder.model(**enc).last_hidden_state  # (B, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def cached_embeddings(
    encoder: Encoder, texts: Sequence[str], *, max_length: int, cache: Path | None = None
) -> np.ndarray:
    """:func:`embed_texts`, kept on disk under ``cache`` (default ``$FEDFM_CACHE/features``)
    keyed by the encoder's name, ``max_length`` and every text, so a second run of the same
    data costs a file read. ``cache = None`` with ``FEDFM_CACHE`` unset uses ``~/.cache``."""
    digest = hashlib.sha256(f"{encoder.name}\0{max_length}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    folder = cache if cache is not None else cache_root() / "features"
    path = folder / f"{digest.hexdigest()[:32]}.npy"
    if path.is_file():
        return np.load(path)
    features = embed_texts(encoder, texts, max_length=max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _npy_bytes(features))
    return features


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
