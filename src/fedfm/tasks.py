"""Tasks bind the loss and the metrics to a model's output.

Every model is called as ``model(**inputs).logits`` with ``inputs`` the batch without
``labels``; the task computes its own loss so that all models are treated alike.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fedfm.data.batching import Batch
from fedfm.dpo import DPOResult, dpo_loss, sequence_logps
from fedfm.errors import ConfigError
from fedfm.registry import Registry
from fedfm.resources.types import CAUSAL_LM, CLASSIFICATION, INSTRUCTION, PREFERENCE

if TYPE_CHECKING:
    from fedfm.config import RunConfig


def _logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


def _on_model_device(model: torch.nn.Module, batches: Iterable[Batch]) -> Iterable[Batch]:
    device = next(model.parameters()).device
    for batch in batches:
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Task(ABC):
    """Loss and metrics for one kind of problem."""

    name: str
    main_metric: str  # the metric a run is judged by
    higher_is_better: bool

    def __init__(self, num_labels: int = 0) -> None:
        self.num_labels = num_labels

    @classmethod
    def from_config(cls, cfg: RunConfig, num_labels: int = 0) -> Task:
        """The task as a run configures it (a task with knobs of its own reads them here)."""
        return cls(num_labels)

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, Any]: ...


TASKS: Registry[type[Task]] = Registry("task")


@TASKS.register(CLASSIFICATION)
class Classification(Task):
    """Sequence/feature classification: cross-entropy; accuracy, macro-F1 and loss."""

    name = CLASSIFICATION
    main_metric = "accuracy"
    higher_is_better = True

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(_logits(model, batch), batch["labels"])

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        preds, labels, loss_sum = [], [], 0.0
        for batch in _on_model_device(model, batches):
            logits = _logits(model, batch).float()
            loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            preds.append(logits.argmax(-1).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
        y_pred, y_true = np.concatenate(preds), np.concatenate(labels)
        f1, recall = class_scores(y_true, y_pred, self.num_labels)
        return {
            "accuracy": float((y_pred == y_true).mean()),
            "macro_f1": float(f1.mean()),
            "loss": loss_sum / len(y_true),
            # recall of each label id (0 for a label absent from the split); a collapse to
            # one class shows as a single 1.0 here and predicted_classes = 1
            "class_recall": recall.tolist(),
            "predicted_classes": int(len(np.unique(y_pred))),
        }


def class_scores(
    y_true: np.ndarray, y_pred: np.ndarray, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each label id's F1 and recall (0 where undefined), as scikit-learn's ``f1_score`` and
    ``recall_score`` with ``labels=range(num_labels), average=None, zero_division=0`` compute
    them, float for float, from three counts instead of their input checks (which cost
    milliseconds per evaluation).

    Example:
        >>> f1, recall = class_scores(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
        >>> f1.round(4).tolist(), recall.tolist()
        ([0.6667, 0.6667, 0.0], [0.5, 1.0, 0.0])
    """

    def count(y: np.ndarray) -> np.ndarray:
        return np.bincount(y[y >= 0], minlength=num_labels)[:num_labels]

    hit = count(y_true[y_true == y_pred])
    true, predicted = count(y_true), count(y_pred)
    return _divide(2.0 * hit, true.astype(np.float64) + predicted), _divide(hit, true)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` in float64, 0 where the denominator is 0."""
    zero = denominator == 0
    out = numerator / np.where(zero, 1, denominator).astype(np.float64)
    out[zero] = 0.0
    return out


class BalancedLoss(Task):
    """A classification task whose training loss is balanced for one client's labels.

    Balanced softmax (Ren et al., NeurIPS 2020), the logit adjustment of Menon et al.
    (ICLR 2021) with the client's own label prior ``pi``: the loss is the cross-entropy of
    ``logits + log(pi)``. A client that holds one or two classes (Dirichlet label skew) then
    fits its labels through the prior rather than by pushing the shared head toward them,
    and a class it does not hold (``pi = 0``) gets no gradient at all, as in FedRS (Li and
    Zhan, KDD 2021). Evaluation is the plain task's: the model itself is never adjusted.

    Example:
        >>> task = BalancedLoss(Classification(3), counts=np.array([5, 0, 1]))
        >>> task.offset.exp().round(decimals=3).tolist()
        [0.833, 0.0, 0.167]
    """

    def __init__(self, task: Task, counts: np.ndarray) -> None:
        super().__init__(task.num_labels)
        self.task, self.name = task, task.name
        self.main_metric, self.higher_is_better = task.main_metric, task.higher_is_better
        prior = torch.as_tensor(counts, dtype=torch.float32) / max(int(counts.sum()), 1)
        self.offset = torch.log(prior.clamp(min=1e-12))  # (K,); an absent class: about -27.6

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        logits = _logits(model, batch)
        return F.cross_entropy(logits + self.offset.to(logits), batch["labels"])

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        return self.task.evaluate(model, batches)


@TASKS.register(CAUSAL_LM)
class CausalLM(Task):
    """Next-token prediction: token-level cross-entropy; loss and perplexity."""

    name = CAUSAL_LM
    main_metric = "perplexity"
    higher_is_better = False

    @staticmethod
    def _token_losses(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _logits(model, batch)[:, :-1]  # (B, T-1, V): position t predicts token t+1
        target = batch["labels"][:, 1:]
        losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            target.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        return losses, (target != -100).sum()

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        total, count = self._token_losses(model, batch)
        return total / count.clamp(min=1)

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        total, count = 0.0, 0
        for batch in _on_model_device(model, batches):
            loss_sum, n = self._token_losses(model, batch)
            total += loss_sum.item()
            count += int(n)
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


@TASKS.register(INSTRUCTION)
class Instruction(CausalLM):
    """Instruction tuning (chat): causal LM's token cross-entropy over the assistant's tokens
    only, the batch's labels being ``-100`` everywhere else (:mod:`fedfm.data.chat`); the
    held-out response loss and perplexity.

    Example:
        >>> Instruction().main_metric, Instruction.higher_is_better
        ('perplexity', False)
    """

    name = INSTRUCTION


def _reference_off(model: torch.nn.Module) -> Any:
    """``model.disable_adapter()``: the frozen backbone alone, DPO's reference model."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise ConfigError(
            f"data.task = 'preference' scores the reference with the adapter switched off, but "
            f"{type(model).__name__} has no adapter to switch off: set adapter.method = 'lora' "
            "or 'ia3'"
        )
    return disable()


@TASKS.register(PREFERENCE)
class Preference(Task):
    """Preference alignment by DPO (:mod:`fedfm.dpo`) on batches of ``k`` pairs laid out as
    ``2k`` rows, the chosen sequences first (:func:`~fedfm.data.batching.collate`), their
    labels ``-100`` outside the responses.

    The policy is the model with its adapter; the reference is the same model with the
    adapter switched off (``model.disable_adapter()``, peft's LoRA or IA3), in eval mode and
    without gradients: the frozen backbone, with no second copy of the model in memory.
    Evaluation: the held-out DPO loss, the preference accuracy (the share of pairs whose
    chosen response gets the larger implicit reward) and the mean reward margin.

    Example:
        >>> task = Preference(beta=0.1)
        >>> task.main_metric, task.higher_is_better, task.beta
        ('preference_accuracy', True, 0.1)
    """

    name = PREFERENCE
    main_metric = "preference_accuracy"
    higher_is_better = True

    def __init__(self, num_labels: int = 0, *, beta: float = 0.1) -> None:
        super().__init__(num_labels)
        self.beta = beta

    @classmethod
    def from_config(cls, cfg: RunConfig, num_labels: int = 0) -> Task:
        return cls(num_labels, beta=cfg.client.dpo_beta)

    def dpo(self, model: torch.nn.Module, batch: Batch) -> DPOResult:
        """The DPO loss and rewards of one batch of pairs: the policy's log-probabilities
        from one forward over the ``2k`` rows, the reference's from another with the
        adapter off."""
        labels = batch["labels"]
        policy = sequence_logps(_logits(model, batch), labels)  # (2k,)
        training = model.training
        model.eval()  # the reference is the frozen backbone as it is: no dropout
        try:
            with torch.no_grad(), _reference_off(model):
                reference = sequence_logps(_logits(model, batch), labels)
        finally:
            model.train(training)
        k = len(policy) // 2
        return dpo_loss(policy[:k], policy[k:], reference[:k], reference[k:], beta=self.beta)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return self.dpo(model, batch).loss

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        loss_sum, chosen, rejected = 0.0, [], []
        for batch in _on_model_device(model, batches):
            result = self.dpo(model, batch)
            loss_sum += result.loss.item() * len(result.chosen_rewards)
            chosen.append(result.chosen_rewards)
            rejected.append(result.rejected_rewards)
        pooled = DPOResult(torch.tensor(0.0), torch.cat(chosen), torch.cat(rejected))
        return {
            "loss": loss_sum / max(len(pooled.chosen_rewards), 1),
            "preference_accuracy": pooled.accuracy,
            "reward_margin": pooled.margin,
        }
