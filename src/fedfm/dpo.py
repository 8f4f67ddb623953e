"""Direct Preference Optimisation (Rafailov et al., NeurIPS 2023): the loss and its metrics.

For a prompt ``x`` with a chosen response ``y_w`` and a rejected one ``y_l``, the policy
``pi`` and a frozen reference ``ref`` (with LoRA, the same backbone with the adapter
switched off), the implicit rewards are ``r(y) = beta * (log pi(y|x) - log ref(y|x))`` and

    loss = -log sigmoid(r(y_w) - r(y_l))

averaged over pairs: TRL's ``loss_type = "sigmoid"``. The held-out metrics are preference
accuracy (the share of pairs with ``r(y_w) > r(y_l)``) and the reward margin (the mean of
``r(y_w) - r(y_l)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's summed log-probability of its labelled tokens (``labels != -100``), with
    the causal shift (the logits at position t predict the token at t + 1): shape ``(B,)``.

    Example:
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
        >>> sequence_logps(logits, torch.tensor([[-100, 2, 3]])).item()  # two tokens, log(1/4) each
        -2.772588...
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    picked = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1))
    return (picked.squeeze(-1) * mask).sum(-1)


@dataclass(frozen=True)
class DPOResult:
    loss: torch.Tensor  # the mean over pairs (a scalar with a graph)
    chosen_rewards: torch.Tensor  # beta * (policy - reference), per pair, detached
    rejected_rewards: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float((self.chosen_rewards > self.rejected_rewards).float().mean())

    @property
    def margin(self) -> float:
        return float((self.chosen_rewards - self.rejected_rewards).mean())


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
) -> DPOResult:
    """The DPO loss of a batch of pairs from their sequence log-probabilities ``(B,)``.

    Example:
        >>> r = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
        ...              torch.tensor([-2.0]), beta=0.5)
        >>> round(r.loss.item(), 4), r.accuracy, r.margin  # -log sigmoid(0.5 * (1 - -1))
        (0.3133, 1.0, 1.0)
    """
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return DPOResult(loss, beta * chosen.detach(), beta * rejected.detach())
