"""The narrow view of a job that one client's local training needs.

A client sees the shared model, the task, the strategy's client half, the update pipeline,
the training pool and its seeds; not the federation, the server's state or the run. The
same context serves the in-process simulator, a Ray worker and a remote client process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedfm.client.prefix_cache import PrefixCache
from fedfm.client.split import SplitModel
from fedfm.config import ClientConfig, DPSGDConfig
from fedfm.data.batching import Encoded
from fedfm.data.federation import ClientData
from fedfm.models.emulator import Emulator
from fedfm.models.params import Params
from fedfm.strategies.base import Strategy
from fedfm.tasks import BalancedLoss, Task
from fedfm.update.chain import Chain

PIPELINE_STREAM = 2**20  # client_seed stream of the pipeline's randomness (stochastic rounding)


def client_seed(seed: int, round_: int, client_id: int, stream: int = 0) -> int:
    """A seed that is a pure function of (run seed, round, client, stream).

    Stream 0 seeds torch (dropout); stream ``1 + epoch`` shuffles that epoch's batches;
    :data:`PIPELINE_STREAM` draws the update pipeline's randomness.
    """
    return int(np.random.default_rng([seed, round_, client_id, stream]).integers(2**31 - 1))


Tamper = Callable[[int, Params, torch.Generator], Params]  # (client id, delta, gen) -> delta


@dataclass
class ClientContext:
    """What local training reads, built once per process (:meth:`Job.client_context`).

    Attributes:
        strategy: only its client half is used (``client_start``, ``client_hooks``,
            ``client_finish``).
        personal: trainable tensors a client keeps to itself (they never travel).
        indices: a client's training indices into ``train`` (a data attacker's poisoned).
        tamper: a model-poisoning attacker's change to its delta (``None``: no attack).
        balanced: train with the loss balanced for each client's labels.
        prefix: the frozen-prefix cache (``client.prefix_cache``): batches carry the states
            entering its layer ``L`` and the model runs layers ``L..`` only; ``None``: off.
        emulator: offsite tuning's emulator (``offsite.enabled``): local training runs in
            its view (dropped middle layers pass through); ``None``: off.
        split: split fine-tuning (``split.enabled``): each local step is the client's
            forward to layer ``k``, the server's step and the client's backward; the
            server-side tensors' delta is not counted as sent; ``None``: off.
        live: ``model``'s trainable tensors by name (:attr:`Job.live`, walked once per
            job); ``None``: each client's round walks the model for them.
        optimizer: one optimizer over ``live`` that every client round reuses, its state
            cleared before and after each (:attr:`Job.optimizer`); ``None``: built per
            client round.
    """

    model: torch.nn.Module
    task: Task
    strategy: Strategy
    pipeline: Chain
    train: Encoded
    causal_lm: bool
    seed: int
    client: ClientConfig
    dpsgd: DPSGDConfig
    personal: frozenset[str]
    indices: Callable[[ClientData], np.ndarray]
    tamper: Tamper | None = None
    balanced: bool = False
    prefix: PrefixCache | None = None
    emulator: Emulator | None = None
    split: SplitModel | None = None
    live: dict[str, torch.nn.Parameter] | None = None
    optimizer: torch.optim.Optimizer | None = None

    def local_task(self, indices: np.ndarray) -> Task:
        """The task a client trains on: the job's, or with ``balanced`` its loss balanced for
        the labels at ``indices`` (:class:`~fedfm.tasks.BalancedLoss`)."""
        if not self.balanced or self.train.labels is None:
            return self.task
        counts = np.bincount(self.train.labels[indices], minlength=self.task.num_labels)
        return BalancedLoss(self.task, counts)
