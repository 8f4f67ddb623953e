"""Sample-level differential privacy: DP-SGD (Abadi et al., 2016) in the local trainer, through
Opacus' per-example gradients (``GradSampleModule``) and ``DPOptimizer``.

Each client's model is wrapped only for its own local training (the one shared backbone
stays unwrapped between clients); Opacus hooks only the modules holding trainable tensors
(the adapter and the head), so the frozen backbone costs nothing extra. The accountant
treats each local step as a Poisson-sampled Gaussian mechanism at rate
``batch_size / client examples``; fedfm's batches are a shuffled partition of the client's
data, the usual approximation (Opacus' own ``DPDataLoader`` samples Poisson batches).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch

from fedfm.config import DPSGDConfig
from fedfm.privacy.accountant import epsilon


@contextlib.contextmanager
def private_training(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: DPSGDConfig, batch_size: int
) -> Iterator[torch.optim.Optimizer]:
    """Yield a DP optimizer over ``optimizer`` with per-example gradient hooks on ``model``;
    the hooks are removed on exit, leaving the model as it was."""
    logging.getLogger("opacus").setLevel(logging.ERROR)
    from opacus import GradSampleModule  # noqa: PLC0415 (slow import, only with DP-SGD)
    from opacus.optimizers import DPOptimizer  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "secure RNG off": seeded noise is what we want here
        wrapped = GradSampleModule(model, loss_reduction="mean")
        dp_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=cfg.noise_multiplier,
            max_grad_norm=cfg.max_grad_norm,
            expected_batch_size=batch_size,
            loss_reduction="mean",
        )
    try:
        with warnings.catch_warnings():  # Opacus' hook on a layer whose input needs no grad
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield dp_optimizer
    finally:
        wrapped._close()  # remove the hooks and per-example grads
        for p in model.parameters():
            p.grad_sample = None  # type: ignore[attr-defined]  # set by Opacus


def client_epsilon(cfg: DPSGDConfig, *, batch_size: int, examples: int, steps: int) -> float:
    """A client's sample-level epsilon after ``steps`` DP-SGD steps on ``examples`` examples."""
    rate = min(1.0, batch_size / max(examples, 1))
    return epsilon(cfg.noise_multiplier, rate, steps, cfg.delta, cfg.accountant)
