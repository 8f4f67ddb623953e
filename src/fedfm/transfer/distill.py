"""Distillation on an unlabelled public set: a model's logits over it, and steps that pull a
model's trainable tensors toward soft targets (:func:`fedfm.transfer.kd.kd_loss`).

Used by the ``distill`` feature in both directions: the server's FM teaching the aggregated
small model, and the cohort's ensemble of small models teaching the FM's adapter.

Example:
    >>> targets = teacher_probs(logits_on(fm, public_fm, batch_size=64), 2.0)  # doctest: +SKIP
    >>> losses = distill_steps(small, public_small, targets, steps=20, lr=1e-3,
    ...                        batch_size=32, temperature=2.0, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedfm.data.batching import Encoded, collate
from fedfm.transfer.kd import kd_loss


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    device = _device(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits.float()


@torch.inference_mode()
def logits_on(model: torch.nn.Module, data: Encoded, *, batch_size: int) -> torch.Tensor:
    """``(N, K)`` float32 CPU logits of ``model`` (in eval mode) on every example of ``data``,
    in order."""
    was_training = model.training
    model.eval()
    out = [
        _forward(
            model, collate(data, np.arange(s, min(s + batch_size, len(data))), causal_lm=False)
        ).cpu()
        for s in range(0, len(data), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)


def distill_steps(
    model: torch.nn.Module,
    data: Encoded,
    targets: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    temperature: float,
    seed: int | list[int],
) -> list[float]:
    """``steps`` Adam steps (fresh optimiser) on ``model``'s trainable tensors, each on a
    seeded random batch of ``data`` with :func:`kd_loss` against ``targets[batch]``
    (``(N, K)`` probabilities at ``temperature``); returns each step's loss.

    The model trains in eval mode (no dropout), as the targets were computed: the KL is then
    exactly 0 when the model already matches them.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(steps):
        rows = rng.choice(len(data), size=min(batch_size, len(data)), replace=False)
        logits = _forward(model, collate(data, rows, causal_lm=False))
        loss = kd_loss(logits, targets[torch.from_numpy(rows)].to(logits.device), temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.train(was_training)
    return losses
