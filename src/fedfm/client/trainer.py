"""The local trainer: the client-side loop, with the strategy's hooks.

The loop reads top to bottom: for each batch, task loss (+ the strategy's extra loss) →
backward → the strategy's gradient correction → clipping → optimiser step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch.utils._foreach_utils import _device_has_foreach_support

from fedfm.client.split import SplitStep
from fedfm.config import ClientConfig, DPSGDConfig
from fedfm.data.batching import Batch
from fedfm.models.params import Params, trainable_parameters
from fedfm.privacy.dpsgd import private_training
from fedfm.strategies.base import LocalHooks
from fedfm.tasks import Task

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda ps, c: torch.optim.AdamW(ps, lr=c.lr, weight_decay=c.weight_decay),
    "adam": lambda ps, c: torch.optim.Adam(ps, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda ps, c: torch.optim.SGD(
        ps, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
    ),
}


@dataclass(frozen=True)
class LocalResult:
    """What local training leaves: ``params``, the trained tensors by name. On CPU these are
    the model's own tensors, detached, not copies: they hold the trained values only until
    the model is next set (the next client), so whatever outlives the client's round is
    copied by its keeper (a strategy's client state, personal tensors)."""

    params: Params
    steps: int
    train_loss: float
    metrics: dict[str, float] = field(default_factory=dict)  # split: the bytes its steps sent


_TORCH_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def _drop_grads(params: list[torch.nn.Parameter]) -> None:
    """``zero_grad(set_to_none=True)`` of a torch optimizer over ``params``: every gradient
    dropped, without the profiler scope and hook dispatch around it (on a small model's
    step those cost more than the step's own work)."""
    for p in params:
        p.grad = None


def gradient_clipper(
    params: list[torch.nn.Parameter], max_norm: float
) -> Callable[[], torch.Tensor]:
    """A call that does ``torch.nn.utils.clip_grad_norm_(params, max_norm)``, float for
    float, with less Python per step (it returns the total norm).

    When every tensor shares one dtype and a device with foreach kernels (decided once,
    here: a gradient has its tensor's dtype and device), each call runs torch's kernels
    without torch's per-call grouping of the tensors by device and dtype: the foreach
    norms, the norm of their stack, the foreach scale by ``min(max_norm / (total + 1e-6),
    1)``. Otherwise torch's own function. On a small model's step, that grouping costs
    about as much as the kernels.
    """
    first = params[0] if params else None
    if (
        first is None
        or not _device_has_foreach_support(first.device)
        or any(p.dtype != first.dtype or p.device != first.device for p in params)
    ):
        return partial(torch.nn.utils.clip_grad_norm_, params, max_norm)
    return partial(_clip_alike, params, max_norm)


def _clip_alike(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    with torch.no_grad():  # not the decorator: that builds a context object per call too
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def trained(live: dict[str, torch.nn.Parameter]) -> Params:
    """The trained tensors of :class:`LocalResult`: ``live`` detached, on CPU without a copy
    (the delta is computed from them at once); from an accelerator, copied to CPU."""
    return {name: p.detach() if p.is_cpu else p.detach().cpu() for name, p in live.items()}


def _epochs_or_steps(
    make_batches: Callable[[int], Iterator[Batch]], cfg: ClientConfig
) -> Iterator[Batch]:
    """``cfg.epochs`` passes over the data, or exactly ``cfg.steps`` batches (cycling)."""
    if cfg.steps == 0:
        for epoch in range(cfg.epochs):
            yield from make_batches(epoch)
        return
    done, epoch = 0, 0
    while done < cfg.steps:
        for batch in make_batches(epoch):
            yield batch
            done += 1
            if done == cfg.steps:
                return
        epoch += 1


def train_locally(
    model: torch.nn.Module,
    task: Task,
    make_batches: Callable[[int], Iterator[Batch]],
    cfg: ClientConfig,
    hooks: LocalHooks,
    dpsgd: DPSGDConfig | None = None,
    split: SplitStep | None = None,
    live: dict[str, torch.nn.Parameter] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> LocalResult:
    """Train ``model``'s trainable tensors in place on one client's data.

    Args:
        model: holds the global params on entry.
        task: gives the loss.
        make_batches: ``epoch -> batches`` (seeded by the caller per client, round, epoch).
        cfg: the ``[client]`` config section.
        hooks: the strategy's client half (proximal term, gradient correction).
        dpsgd: train with DP-SGD (per-example clipping and noise, through Opacus).
        split: split fine-tuning (``[split]``): each step is the client's forward, the
            server's step and the client's backward (:mod:`fedfm.client.split`).
        live: ``model``'s :func:`trainable_parameters`, when the caller holds them.
        optimizer: an optimizer over ``live`` (``cfg.optimizer``, built with ``cfg``'s
            hyperparameters) to reuse instead of building one: its state is cleared before
            and after (a fresh one's: no moments, step 0; none held between client rounds).
            DP-SGD builds its own.
    """
    if split is not None and dpsgd is not None and dpsgd.enabled:
        raise ValueError("split fine-tuning does not run under DP-SGD (the config refuses it)")
    if live is None:
        live = trainable_parameters(model)
    if optimizer is None or (dpsgd is not None and dpsgd.enabled):
        optimizer = OPTIMIZERS[cfg.optimizer](list(live.values()), cfg)
    else:
        optimizer.state.clear()
    with _left_alone(live, hooks.frozen):
        if dpsgd is not None and dpsgd.enabled:
            with private_training(model, optimizer, dpsgd, cfg.batch_size) as dp_optimizer:
                # DP-SGD clips each example's gradient itself: no batch-level clipping on top
                return _loop(
                    model,
                    task,
                    make_batches,
                    replace(cfg, max_grad_norm=0.0),
                    hooks,
                    live,
                    dp_optimizer,
                )
        try:
            return _loop(model, task, make_batches, cfg, hooks, live, optimizer, split=split)
        finally:  # a reused optimizer holds no moments between client rounds (memory)
            optimizer.state.clear()


@contextlib.contextmanager
def _left_alone(live: dict[str, torch.nn.Parameter], frozen: frozenset[str]) -> Iterator[None]:
    """``frozen`` tensors stop requiring gradients for the block: they get none (optimisers
    skip a tensor without one), and backward stops below a top-layers client's lowest
    trained layer instead of running down to layer 0."""
    tensors = [live[name] for name in frozen]
    for tensor in tensors:
        tensor.requires_grad_(False)
    try:
        yield
    finally:
        for tensor in tensors:
            tensor.requires_grad_(True)


def _loop(
    model: torch.nn.Module,
    task: Task,
    make_batches: Callable[[int], Iterator[Batch]],
    cfg: ClientConfig,
    hooks: LocalHooks,
    live: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    *,
    split: SplitStep | None = None,
) -> LocalResult:
    device = next(iter(live.values())).device
    on_accelerator = device.type != "cpu"
    correction = (
        {k: v.to(device) for k, v in hooks.grad_correction.items()}
        if hooks.grad_correction
        else None
    )
    params = list(live.values())
    if type(optimizer) in _TORCH_OPTIMIZERS:  # Opacus' also clears per-example gradients
        zero_grad: Callable[[], None] = partial(_drop_grads, params)
    else:
        zero_grad = partial(optimizer.zero_grad, set_to_none=True)
    clip = gradient_clipper(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
    model.train()
    steps, loss_sum = 0, 0.0
    for batch in _epochs_or_steps(make_batches, cfg):
        if on_accelerator:  # batches are made on CPU
            batch = {k: v.to(device) for k, v in batch.items()}
        if split is not None:  # the client's forward, the server's step, the client's backward
            zero_grad()
            loss_sum += split.step(task, batch).item()  # both halves' gradients in place
            if hooks.extra_loss is not None:
                hooks.extra_loss(live).backward()
        else:
            loss = task.loss(model, batch)
            loss_sum += loss.item()
            if hooks.extra_loss is not None:
                loss = loss + hooks.extra_loss(live)
            zero_grad()
            loss.backward()
        if correction is not None:
            for name, p in live.items():
                if p.grad is not None:
                    p.grad.add_(correction[name])
        if clip is not None:
            clip()
        optimizer.step()
        steps += 1
    model.eval()
    return LocalResult(
        params=trained(live),
        steps=steps,
        train_loss=loss_sum / max(steps, 1),
        metrics=split.metrics() if split is not None else {},
    )
