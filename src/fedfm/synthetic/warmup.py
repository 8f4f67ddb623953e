"""Server warm-up (GPT-FL): train the global trainable params on the synthetic set before
round 1, with the local trainer and the ``[client]`` optimiser settings."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedfm.client.trainer import train_locally
from fedfm.config import RunConfig
from fedfm.data.batching import Encoded, batches
from fedfm.strategies.base import LocalHooks
from fedfm.tasks import Task

WARMUP_STREAM = 7  # seed stream of the warm-up's shuffling and dropout


def server_warmup(
    model: torch.nn.Module, task: Task, train: Encoded, indices: np.ndarray, cfg: RunConfig
) -> dict[str, Any]:
    """Train ``model`` in place for ``synthetic.warmup_epochs`` over ``train[indices]``.

    Returns:
        What the warm-up did: examples, steps, mean loss and seconds.
    """
    started = time.perf_counter()
    seeds = np.random.default_rng([cfg.seed, WARMUP_STREAM]).integers(
        2**31 - 1, size=cfg.synthetic.warmup_epochs + 1
    )
    torch.default_generator.manual_seed(int(seeds[0]))

    def make_batches(epoch: int):  # noqa: ANN202
        return batches(
            train,
            indices,
            batch_size=cfg.client.batch_size,
            causal_lm=False,
            seed=int(seeds[1 + epoch]),
            bucket_by_length=cfg.client.bucket_by_length,
        )

    client_cfg = replace(cfg.client, epochs=cfg.synthetic.warmup_epochs, steps=0)
    result = train_locally(model, task, make_batches, client_cfg, LocalHooks())
    return {
        "warmup_examples": len(indices),
        "warmup_steps": result.steps,
        "warmup_loss": result.train_loss,
        "warmup_seconds": time.perf_counter() - started,
    }
