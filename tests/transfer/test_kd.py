"""The distillation loss against a hand computation (issue 22), its T² scaling and gradient,
and FedDF's ensemble (the mean of softmaxes, not the softmax of the mean)."""

from __future__ import annotations

import math

import pytest
import torch

from fedfm.transfer.kd import ensemble_probs, kd_loss, teacher_probs


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def hand_kd(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T² · mean over rows of Σ p log(p / q), written out with floats."""
    total = 0.0
    for s, z in zip(student, teacher, strict=True):
        p, q = softmax(z, t), softmax(s, t)
        total += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q, strict=True))
    return t * t * total / len(student)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_kd_loss_matches_the_hand_computation(t: float) -> None:
    student = [[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]
    teacher = [[0.0, 1.0, 0.0], [1.0, 2.0, 3.0]]
    got = kd_loss(torch.tensor(student), teacher_probs(torch.tensor(teacher), t), t)
    assert float(got) == pytest.approx(hand_kd(student, teacher, t), rel=1e-5)


def test_the_two_class_example_by_hand() -> None:
    # p = (1/(1+e), e/(1+e)), q = (e/(1+e), 1/(1+e)): KL = (e-1)/(e+1) · 1 = tanh(1/2)
    got = kd_loss(torch.tensor([[1.0, 0.0]]), teacher_probs(torch.tensor([[0.0, 1.0]]), 1.0), 1.0)
    assert float(got) == pytest.approx(math.tanh(0.5), rel=1e-6)


def test_zero_only_at_the_target_and_a_one_hot_target_is_cross_entropy() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    assert float(kd_loss(logits, teacher_probs(logits, 3.0), 3.0)) == pytest.approx(0, abs=1e-6)
    one_hot = torch.tensor([[0.0, 0.0, 1.0]])  # 0 log 0 = 0, no NaN
    t = 2.0
    expected = -math.log(softmax([0.3, -1.2, 2.0], t)[2]) * t * t
    assert float(kd_loss(logits, one_hot, t)) == pytest.approx(expected, rel=1e-6)


def test_gradient_is_t_times_q_minus_p_so_t_squared_keeps_its_size() -> None:
    t = 4.0
    student = torch.tensor([[1.0, -0.5, 0.2]], requires_grad=True)
    target = teacher_probs(torch.tensor([[0.0, 2.0, -1.0]]), t)
    kd_loss(student, target, t).backward()
    q = torch.softmax(student.detach() / t, -1)
    # d/dz [T² KL(p || softmax(z/T))] = T (q - p): T² makes up for the 1/T² of the soft targets
    assert torch.allclose(student.grad, t * (q - target), atol=1e-6)


def test_target_gets_no_gradient_and_bad_temperature_is_refused() -> None:
    target = torch.tensor([[0.5, 0.5]], requires_grad=True)
    kd_loss(torch.zeros(1, 2, requires_grad=True), target, 1.0).backward()
    assert target.grad is None
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), 0.0)


def test_ensemble_is_the_mean_of_softmaxes() -> None:
    a, b = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    t = 2.0
    got = ensemble_probs([a, b], t)
    pa, pb = softmax([4.0, 0.0], t), softmax([0.0, 0.0], t)
    assert got[0].tolist() == pytest.approx([(pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2], rel=1e-6)
    # not the softmax of the mean logits
    assert got[0, 0].item() != pytest.approx(softmax([2.0, 0.0], t)[0], rel=1e-3)
    with pytest.raises(ValueError):
        ensemble_probs([], t)
