"""DP-SGD in the local trainer through Opacus: per-example clipping bounds the step, the
noise has the stated spread, the model is left unhooked, the accountant is Opacus'."""

import pytest
import torch

from fedfm.config import ClientConfig, DPSGDConfig, load_config
from fedfm.privacy.accountant import epsilon
from fedfm.privacy.dpsgd import client_epsilon, private_training
from fedfm.report.metrics import read_records
from fedfm.runtime.run import execute, prepare_run_dir


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _step(model, cfg, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    with private_training(model, optimizer, cfg, batch_size=len(x)) as dp:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        dp.zero_grad()
        loss.backward()
        dp.step()
    return torch.cat(
        [(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before, strict=True)]
    )


def test_without_noise_the_step_is_the_mean_of_clipped_example_gradients():
    x, y = torch.randn(16, 4) * 100, torch.randint(0, 2, (16,))  # huge gradients: all clipped
    step = _step(_model(), DPSGDConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=0.1), x, y)
    assert float(step.norm()) <= 0.1 + 1e-6  # a mean of vectors of norm <= C


def test_noise_has_spread_noise_multiplier_times_clip_over_batch():
    x, y = torch.zeros(50, 4), torch.zeros(50, dtype=torch.long)
    model = _model()
    for p in model.parameters():
        torch.nn.init.zeros_(p)  # zero gradients: the step is the noise alone
    torch.manual_seed(1)
    step = _step(model, DPSGDConfig(enabled=True, noise_multiplier=2.0, max_grad_norm=0.5), x, y)
    first = step[:40]  # layer 1 (zero input, zero weights): no gradient, only noise
    assert float(first.std()) == pytest.approx(2.0 * 0.5 / 50, rel=0.3)


def test_the_model_is_left_without_hooks():
    model = _model()
    _step(model, DPSGDConfig(enabled=True), torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_client_epsilon_is_the_accountants_for_the_client_sample_rate():
    cfg = DPSGDConfig(enabled=True, noise_multiplier=1.1)
    assert client_epsilon(cfg, batch_size=32, examples=320, steps=30) == pytest.approx(
        epsilon(1.1, 0.1, 30, 1e-5)
    )


def test_dpsgd_run_reports_the_worst_client_epsilon_and_learns(tmp_path):
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            "model.name=mlp",
            "adapter.method=full",
            "data.num_clients=5",
            "data.partition=iid",
            "strategy.fraction=1.0",
            "client.epochs=3",
            "client.lr=0.01",
            "rounds=3",
            "dpsgd.enabled=true",
            "dpsgd.noise_multiplier=0.8",
            "dpsgd.max_grad_norm=1.0",
            f"output_dir={tmp_path}",
        ],
    )
    summary = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False))
    records = read_records(tmp_path / cfg.run_name / "metrics.jsonl")
    eps = [r["dpsgd_epsilon_max"] for r in records]
    assert eps == sorted(eps) and eps[0] > 0
    assert summary["dpsgd_epsilon_max"] == eps[-1]
    assert summary["final"]["test_accuracy"] > 0.5
    assert ClientConfig().max_grad_norm > 0  # batch clipping stays on outside DP-SGD
