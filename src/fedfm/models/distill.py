"""Distilling offsite tuning's emulator (``offsite.distill_steps``): copies of the kept middle
layers learn to map the middle block's input to the full middle block's output.

The objective is the block-level mean squared error of hidden states: for a batch of public
text, the *target* is the full model's hidden states leaving the last middle layer
(``L - t - 1``), the *output* the emulator's (the same bottom layers, then the kept middle
layers' copies chained, the dropped ones passing through), averaged over the hidden size
and the batch's non-pad tokens. Only the copies train (AdamW, no dropout); the full model,
its adapter tensors included, is not touched, so plug-in evaluation still runs the original
middle block. This is the paper's layer-wise MSE applied to the middle block as a whole:
with fewer layers kept than stood in for, no kept layer has one full layer to match.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fedfm.models.emulator import Emulator, LayerMap

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Distilled:
    """The distilled copies and what distilling did.

    Attributes:
        replacements: full-model index -> the trained copy of that kept middle layer (frozen
            again: ``requires_grad`` off).
        loss_before, loss_after: the block MSE on the held-out public batches, with the
            original kept layers and with the copies.
        steps: optimiser steps taken.
        seconds: wall time of the whole distillation (both evaluations included).
    """

    replacements: dict[int, torch.nn.Module]
    loss_before: float
    loss_after: float
    steps: int
    seconds: float


class _Stop(Exception):
    """Raised by the hook on the last middle layer: the rest of the forward is not needed."""


def middle_output(
    model: torch.nn.Module, layers: torch.nn.ModuleList, lmap: LayerMap, batch: Batch
) -> torch.Tensor:
    """The hidden states leaving the middle block (layer ``L - t - 1``), ``(B, T, hidden)``,
    from the model as it is (inside :meth:`Emulator.view`: the emulator's); gradients flow
    when they are enabled."""
    seen: list[torch.Tensor] = []

    def grab(_: torch.nn.Module, __: Any, output: Any) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = layers[lmap.middle[-1]].register_forward_hook(grab)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def block_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the non-pad tokens (``mask`` ``(B, T)``) of the squared error averaged over
    the hidden size."""
    per_token = (output.float() - target.float()).pow(2).mean(dim=-1)
    weight = mask.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


def distill(
    model: torch.nn.Module,
    layers: torch.nn.ModuleList,
    lmap: LayerMap,
    train_batches: Callable[[int], Iterator[Batch]],
    eval_batches: list[Batch],
    *,
    steps: int,
    lr: float,
) -> Distilled:
    """Train copies of ``lmap.kept`` for ``steps`` batches of ``train_batches(epoch)``
    (cycled, epoch by epoch) to the block MSE; ``model`` is left as it was.

    Raises:
        ValueError: the emulator keeps no middle layer (nothing to distil).
    """
    if not lmap.kept:
        raise ValueError("the emulator keeps no middle layer: there is nothing to distil")
    started = time.perf_counter()
    copies = {i: copy.deepcopy(layers[i]) for i in lmap.kept}
    params = [p for c in copies.values() for p in c.parameters()]
    for p in params:
        p.requires_grad_(True)
    emulator = Emulator(layers, lmap, copies)
    device = next(model.parameters()).device
    training = model.training
    model.eval()  # no dropout: the target and the output are deterministic
    try:
        before = _evaluate(model, layers, lmap, emulator, eval_batches, device)
        optimizer = torch.optim.AdamW(params, lr=lr)
        done = 0
        for batch in _cycle(train_batches, steps):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                target = middle_output(model, layers, lmap, batch)
            with emulator.view():
                output = middle_output(model, layers, lmap, batch)
            loss = block_loss(output, target, batch["attention_mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=params)  # the copies only: the adapter tensors stay as they are
            optimizer.step()
            done += 1
        after = _evaluate(model, layers, lmap, emulator, eval_batches, device)
    finally:
        model.train(training)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return Distilled(copies, before, after, done, time.perf_counter() - started)


def _cycle(make: Callable[[int], Iterator[Batch]], steps: int) -> Iterator[Batch]:
    done, epoch = 0, 0
    while done < steps:
        empty = True
        for batch in make(epoch):
            empty = False
            yield batch
            done += 1
            if done == steps:
                return
        if empty:
            raise ValueError("the public data for distillation gave no batch")
        epoch += 1


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module,
    layers: torch.nn.ModuleList,
    lmap: LayerMap,
    emulator: Emulator,
    eval_batches: list[Batch],
    device: torch.device,
) -> float:
    """The block MSE over ``eval_batches``, weighted by their non-pad tokens."""
    total, tokens = 0.0, 0.0
    for batch in eval_batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        target = middle_output(model, layers, lmap, batch)
        with emulator.view():
            output = middle_output(model, layers, lmap, batch)
        n = float(batch["attention_mask"].sum())
        total += float(block_loss(output, target, batch["attention_mask"])) * n
        tokens += n
    return total / max(tokens, 1.0)
