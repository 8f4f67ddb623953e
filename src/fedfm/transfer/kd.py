"""Knowledge distillation: the KL loss at a temperature, and the ensemble of several models.

``kd_loss`` is Hinton et al.'s (2015) soft-target loss, scaled by ``T²`` so that its
gradients keep their size as ``T`` changes::

    KL(p || q) · T²,   p = softmax(teacher / T) (or given probabilities),
                       q = softmax(student / T),
    KL(p || q) = mean over the batch of Σ_k p_k (log p_k − log q_k)

The ensemble of FedDF (Lin et al., 2020) is the average of the members' softened softmaxes
(:func:`ensemble_probs`), not of their logits.

Example:
    >>> student = torch.tensor([[1.0, 0.0]])
    >>> teacher = torch.tensor([[0.0, 1.0]])
    >>> round(float(kd_loss(student, teacher_probs(teacher, 1.0), 1.0)), 4)
    0.4621
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F  # noqa: N812


def teacher_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)``, ``(B, K)``: one teacher's soft targets."""
    return F.softmax(logits.float() / temperature, dim=-1)


def ensemble_probs(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """FedDF's ensemble: the mean of the members' ``softmax(logits / T)``, ``(B, K)``."""
    if not logits:
        raise ValueError("an ensemble needs at least one member")
    return torch.stack([teacher_probs(z, temperature) for z in logits]).mean(0)


def kd_loss(
    student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T² · KL(target || softmax(student / T))``, averaged over the batch.

    Args:
        student_logits: ``(B, K)`` raw logits of the model being trained.
        target_probs: ``(B, K)`` soft targets (rows sum to 1), already at temperature ``T``
            (:func:`teacher_probs`, :func:`ensemble_probs`); no gradient flows into them.
        temperature: ``T > 0``.

    Returns:
        A scalar; 0 exactly when the student's softened distribution is the target.
    """
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature} must be > 0")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    target = target_probs.detach().float()
    # p log p with 0 log 0 = 0 (a target may put no mass on a class)
    kl = torch.xlogy(target, target) - target * log_q
    return kl.sum(-1).mean() * temperature**2
