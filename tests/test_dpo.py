"""DPO's loss and metrics against a hand computation; sequence log-probabilities by loop."""

import math

import torch

from fedfm.dpo import dpo_loss, sequence_logps


def test_the_loss_is_the_papers_formula_computed_by_hand():
    pc, pr = torch.tensor([-4.0, -2.5, -7.0]), torch.tensor([-5.0, -2.0, -9.5])
    rc, rr = torch.tensor([-4.5, -3.0, -6.0]), torch.tensor([-4.5, -2.2, -9.0])
    beta = 0.1
    out = dpo_loss(pc, pr, rc, rr, beta=beta)
    by_hand = []
    for i in range(3):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        by_hand.append(-math.log(1 / (1 + math.exp(-z))))
    assert math.isclose(out.loss.item(), sum(by_hand) / 3, rel_tol=1e-6)
    chosen = [beta * (pc[i] - rc[i]).item() for i in range(3)]
    rejected = [beta * (pr[i] - rr[i]).item() for i in range(3)]
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    assert math.isclose(out.accuracy, wins / 3, rel_tol=1e-6)
    assert math.isclose(out.margin, sum(chosen) / 3 - sum(rejected) / 3, rel_tol=1e-6)


def test_at_the_reference_the_loss_is_log_2_and_it_falls_as_the_chosen_gains():
    zero = torch.zeros(4)
    at_reference = dpo_loss(zero, zero, zero, zero, beta=0.1).loss.item()
    assert math.isclose(at_reference, math.log(2), rel_tol=1e-6)
    policy = torch.zeros(4, requires_grad=True)
    dpo_loss(policy, zero, zero, zero, beta=0.1).loss.backward()
    assert (policy.grad < 0).all()  # raising log pi(chosen) lowers the loss


def test_sequence_logps_sum_the_labelled_tokens_with_the_causal_shift():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, 2, -100, -100]])
    expected = []
    for b in range(2):
        total = 0.0
        for t in range(1, 5):
            if labels[b, t] != -100:
                total += logits[b, t - 1].log_softmax(-1)[labels[b, t]].item()
        expected.append(total)
    assert torch.allclose(sequence_logps(logits, labels), torch.tensor(expected), atol=1e-5)
