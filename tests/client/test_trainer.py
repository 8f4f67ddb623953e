"""The local trainer's lean pieces against the torch calls they stand for, float for float."""

import pytest
import torch

from fedfm.client.trainer import OPTIMIZERS, gradient_clipper, train_locally
from fedfm.config import ClientConfig
from fedfm.models.params import get_params, set_params, trainable_parameters
from fedfm.strategies.base import LocalHooks
from fedfm.tasks import Classification


def _with_grads(scale: float, seed: int = 0, dtypes=(torch.float32,) * 3):
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.zeros(n, dtype=d)) for n, d in zip((7, 3, 5), dtypes, strict=True)
    ]
    for p in params[:2]:  # the last one has no gradient (frozen, or unused this step)
        p.grad = (torch.randn(p.shape, generator=gen) * scale).to(p.dtype)
    return params


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0, float("nan")])
def test_clip_grad_norm_equals_torchs_bit_for_bit(scale, dtype):
    ours, theirs = _with_grads(scale, dtypes=(dtype,) * 3), _with_grads(scale, dtypes=(dtype,) * 3)
    total = gradient_clipper(ours, 1.0)()
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(total, expected, rtol=0, atol=0, equal_nan=True)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True)


def test_clip_grad_norm_of_mixed_dtypes_is_torchs_and_of_no_gradient_is_zero():
    dtypes = (torch.float32, torch.bfloat16, torch.float32)
    ours, theirs = _with_grads(50.0, dtypes=dtypes), _with_grads(50.0, dtypes=dtypes)
    torch.testing.assert_close(
        gradient_clipper(ours, 1.0)(), torch.nn.utils.clip_grad_norm_(theirs, 1.0), rtol=0, atol=0
    )
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours[:2], theirs[:2], strict=True))
    assert gradient_clipper([torch.nn.Parameter(torch.zeros(2))], 1.0)().item() == 0.0


def _copy(result):
    """A local result's params outlive the next client's training only as copies."""
    return {k: v.clone() for k, v in result.params.items()}


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):  # the model contract: model(**inputs).logits
        return type("Out", (), {"logits": self.head(torch.relu(self.body(x)))})()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_reused_optimizer_trains_each_client_as_a_fresh_one(optimizer):
    """The job's one optimizer, its state cleared before each client, gives every client
    the params a freshly built optimizer gives (moments and step count start from zero)."""
    cfg = ClientConfig(steps=3, optimizer=optimizer, lr=0.05, momentum=0.9)
    task = Classification(3)
    gen = torch.Generator().manual_seed(1)
    clients = [
        [{"x": torch.randn(5, 4, generator=gen), "labels": torch.randint(3, (5,), generator=gen)}]
        for _ in range(3)
    ]
    model = _Tiny()
    start = get_params(model)
    live = trainable_parameters(model)
    reused = OPTIMIZERS[optimizer](list(live.values()), cfg)
    steps = []
    reused.register_step_post_hook(lambda *_: steps.append(1))
    for data in clients:  # each client from the same start: fresh vs reused
        set_params(model, start)
        fresh = _copy(train_locally(model, task, lambda e, d=data: iter(d), cfg, LocalHooks()))
        set_params(model, start)
        result = train_locally(
            model, task, lambda e, d=data: iter(d), cfg, LocalHooks(), live=live, optimizer=reused
        )
        assert not reused.state  # emptied after: no moments held between clients
        assert all(torch.equal(fresh[k], result.params[k]) for k in fresh)
    assert len(steps) == cfg.steps * len(clients)  # the reused one did the stepping


def test_train_locally_equals_a_plain_torch_loop_bit_for_bit():
    """Its lean pieces (the job's reused optimizer, gradients dropped without
    ``zero_grad``, the lean clip) against the idiomatic loop: AdamW built per client,
    ``zero_grad``, ``clip_grad_norm_``, ``step``; two clients in turn, several steps each,
    the clip active."""
    cfg = ClientConfig(steps=4, optimizer="adamw", lr=0.1, weight_decay=0.01, max_grad_norm=0.5)
    task = Classification(3)
    gen = torch.Generator().manual_seed(2)
    data = [
        {"x": torch.randn(6, 4, generator=gen), "labels": torch.randint(3, (6,), generator=gen)}
        for _ in range(2)
    ]
    model = _Tiny()
    start = get_params(model)
    live = trainable_parameters(model)
    reused = OPTIMIZERS["adamw"](list(live.values()), cfg)
    for batch in data:
        set_params(model, start)
        ours = _copy(
            train_locally(
                model,
                task,
                lambda e, b=batch: iter([b]),
                cfg,
                LocalHooks(),
                live=live,
                optimizer=reused,
            )
        )
        set_params(model, start)
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        for _ in range(cfg.steps):
            loss = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
        assert all(torch.equal(ours[k], p.detach()) for k, p in model.named_parameters())
