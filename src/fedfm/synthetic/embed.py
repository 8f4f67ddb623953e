"""Sentence embeddings from the bundled MiniLM encoder (mean pooling, unit length), as
sentence-transformers computes them for all-MiniLM-L6-v2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import transformers

from fedfm.resources.models import minilm_dir, quiet_transformers


class Encoder:
    """MiniLM as a sentence encoder: ``encoder(texts)`` is a ``(N, 384)`` float32 tensor of
    unit-length embeddings; cosine similarity is their dot product."""

    def __init__(self, *, max_length: int = 64, batch_size: int = 128) -> None:
        path = minilm_dir(what="the synthetic-data filters (MiniLM embeddings)")
        with quiet_transformers():
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            self.model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)
