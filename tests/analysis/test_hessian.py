from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedfm.analysis.hessian import top_hessian_eigenvalue

EIGS = [7.0, 3.0, 2.0, 1.0, 0.5, 0.0]


class Quadratic(nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.x = nn.Parameter(torch.linspace(-1.0, 1.0, a.shape[0], dtype=a.dtype))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.x @ self.a @ self.x


def _psd_matrix(eigs: list[float]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def _tiny_mlp_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    return model, x, y


def _exact_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(theta, sizes)
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    hess = torch.autograd.functional.hessian(loss_of, flat)
    eigs = torch.linalg.eigvalsh(hess)
    return float(eigs.max())


def test_quadratic_matches_known_max_eigenvalue() -> None:
    model = Quadratic(_psd_matrix(EIGS))
    eig = top_hessian_eigenvalue(model, model, iters=200, tol=1e-8)
    assert eig == pytest.approx(max(EIGS), rel=1e-3)


def test_negative_curvature_dominant_still_gives_the_largest_eigenvalue() -> None:
    eigs = [-9.0, 4.0, 1.0, 0.5]  # power iteration alone would converge to -9
    model = Quadratic(_psd_matrix(eigs))
    assert top_hessian_eigenvalue(model, model, iters=300, tol=1e-9) == pytest.approx(4.0, rel=1e-3)


def test_quadratic_default_settings_close() -> None:
    model = Quadratic(_psd_matrix(EIGS))
    assert top_hessian_eigenvalue(model, model) == pytest.approx(max(EIGS), rel=1e-2)


def test_tiny_mlp_matches_exact_hessian() -> None:
    model, x, y = _tiny_mlp_problem()
    exact = _exact_top_eigenvalue(model, x, y)
    estimate = top_hessian_eigenvalue(
        model, lambda: nn.functional.cross_entropy(model(x), y), iters=500, tol=1e-9
    )
    assert estimate == pytest.approx(exact, rel=0.02)


class FrozenAndTrainable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
        self.trainable = nn.Parameter(torch.ones(3))

    def forward(self) -> torch.Tensor:
        # Hessian: frozen block 10·I, trainable block 2·I, cross terms I.
        a, b = self.frozen, self.trainable
        return 5.0 * a @ a + b @ b + a @ b


def test_frozen_params_are_ignored() -> None:
    model = FrozenAndTrainable()
    assert top_hessian_eigenvalue(model, model) == pytest.approx(2.0, rel=1e-6)


def test_same_seed_same_value() -> None:
    model, x, y = _tiny_mlp_problem()

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    first = top_hessian_eigenvalue(model, loss, iters=5, seed=7)
    second = top_hessian_eigenvalue(model, loss, iters=5, seed=7)
    assert first == second


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_and_eval_during(training: bool) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    model.train(training)
    x = torch.randn(8, 3)
    seen: list[bool] = []

    def loss() -> torch.Tensor:
        seen.append(model.training)
        return model(x).pow(2).mean()

    top_hessian_eigenvalue(model, loss, iters=3)
    assert seen == [False]
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_mixed_submodule_modes_restored() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    model.train()
    model[1].eval()
    x = torch.randn(8, 3)
    top_hessian_eigenvalue(model, lambda: model(x).pow(2).mean(), iters=3)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_loss_linear_in_params_gives_zero() -> None:
    model = nn.Linear(3, 1)
    x = torch.randn(5, 3)
    assert top_hessian_eigenvalue(model, lambda: model(x).sum()) == 0.0


def test_no_trainable_params_raises() -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        top_hessian_eigenvalue(model, lambda: model(torch.ones(1, 2)).sum())
