"""Strategies against hand computations and a quadratic where client drift is known."""

import torch

from fedfm.client.trainer import train_locally
from fedfm.config import ClientConfig, StrategyConfig
from fedfm.models.params import get_params, set_params
from fedfm.strategies import STRATEGIES, Update
from fedfm.tasks import Task
from fedfm.update.chain import Chain


def _updates(*values, weights=None):
    """Updates whose deltas are ``values``."""
    weights = weights or [1] * len(values)
    return [
        Update(i, {"w": torch.tensor(v)}, n)
        for i, (v, n) in enumerate(zip(values, weights, strict=True))
    ]


def _step(strategy, round_, params, updates):
    """One server step as a round takes it: the update chain's mean (no stage), then aggregate."""
    return strategy.aggregate(round_, params, Chain().reduce(round_, updates).mean, updates)


def test_fedavg_is_example_weighted():
    s = STRATEGIES.get("fedavg")(StrategyConfig())
    out = _step(s, 1, {"w": torch.tensor([1.0])}, _updates([1.0], [4.0], weights=[3, 1]))
    torch.testing.assert_close(out["w"], torch.tensor([2.75]))


def test_fedadam_one_step_matches_hand_computation():
    cfg = StrategyConfig(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    s = STRATEGIES.get("fedadam")(cfg)
    x = {"w": torch.tensor([1.0, -2.0])}
    s.initialize(x)
    out = _step(s, 1, x, _updates([0.5, 0.0], [1.5, 1.0]))
    delta = torch.tensor([1.0, 0.5])  # the mean client delta
    m = 0.1 * delta
    v = 0.99 * 1e-6 + 0.01 * delta**2
    torch.testing.assert_close(out["w"], x["w"] + 0.1 * m / (v.sqrt() + 1e-3))
    torch.testing.assert_close(s.state_dict()["v"]["w"], v)


def test_fedyogi_and_fedadagrad_second_moments():
    x = {"w": torch.tensor([0.0])}  # one client delta of 2: delta^2 = 4, v starts at tau^2
    for name, expected in (("fedadagrad", 1e-6 + 4.0), ("fedyogi", 1e-6 + 0.01 * 4.0)):
        s = STRATEGIES.get(name)(StrategyConfig(tau=1e-3, beta2=0.99))
        s.initialize(x)
        _step(s, 1, x, _updates([2.0]))
        torch.testing.assert_close(s.state_dict()["v"]["w"], torch.tensor([expected]))


def test_fedavgm_accumulates_momentum():
    s = STRATEGIES.get("fedavgm")(StrategyConfig(server_lr=1.0, server_momentum=0.5))
    x = {"w": torch.tensor([0.0])}
    s.initialize(x)
    x1 = _step(s, 1, x, _updates([1.0]))  # m = 1
    x2 = _step(s, 2, x1, _updates([0.0]))  # delta = 0, m = 0.5
    torch.testing.assert_close(x1["w"], torch.tensor([1.0]))
    torch.testing.assert_close(x2["w"], torch.tensor([1.5]))


def test_cohort_selection_is_seeded_and_sized():
    s = STRATEGIES.get("fedavg")(StrategyConfig(fraction=0.3))
    assert s.select(1, 10, seed=0) == s.select(1, 10, seed=0)
    assert len(s.select(1, 10, seed=0)) == 3
    assert s.select(1, 10, seed=0) != s.select(2, 10, seed=0) or s.select(
        3, 10, seed=0
    ) != s.select(1, 10, seed=0)
    s2 = STRATEGIES.get("fedavg")(StrategyConfig(clients_per_round=4))
    assert len(s2.select(1, 10, seed=0)) == 4


# --------------------------------------------------------------------------- quadratic world
class Point(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


class Quadratic(Task):
    """Client loss 0.5 * a * ||w - b||^2 (a and b come in the batch)."""

    name, main_metric, higher_is_better = "quadratic", "loss", False

    def loss(self, model, batch):
        return 0.5 * (batch["a"][0] * (model.w - batch["b"][0]) ** 2).sum()

    def evaluate(self, model, batches):
        return {}


A = [1.0, 10.0, 1.0, 10.0]
B = [[0.0, 0.0], [1.0, 1.0], [2.0, -1.0], [-1.0, 3.0]]


def _federate(strategy_name, rounds=150, mu=0.0):
    model, task = Point(), Quadratic()
    cfg = ClientConfig(steps=10, optimizer="sgd", lr=0.05, max_grad_norm=0.0)
    strategy = STRATEGIES.get(strategy_name)(StrategyConfig(proximal_mu=mu), num_clients=4)
    x = get_params(model)
    strategy.initialize(x)
    states = {}
    for r in range(1, rounds + 1):
        payload, updates = strategy.payload(r), []
        for i, (a, b) in enumerate(zip(A, B, strict=True)):
            set_params(model, x)
            hooks = strategy.client_hooks(x, payload, states.get(i, {}))
            batch = {"a": torch.tensor([a]), "b": torch.tensor([b])}
            res = train_locally(model, task, lambda e, batch=batch: iter([batch]), cfg, hooks)
            extras, states[i] = strategy.client_finish(
                x, res.params, payload, states.get(i, {}), steps=res.steps, lr=cfg.lr
            )
            updates.append(Update(i, {"w": res.params["w"] - x["w"]}, 1, extras=extras))
        x = _step(strategy, r, x, updates)
    return x["w"]


def test_scaffold_removes_client_drift_that_fedavg_suffers():
    a, b = torch.tensor(A)[:, None], torch.tensor(B)
    optimum = (a * b).sum(0) / a.sum()
    fedavg = _federate("fedavg")
    scaffold = _federate("scaffold")
    assert torch.dist(fedavg, optimum) > 0.1  # drift: local steps overshoot toward own b
    assert torch.dist(scaffold, optimum) < 1e-3


def test_fedprox_term_pulls_clients_toward_global():
    model, task = Point(), Quadratic()
    cfg = ClientConfig(steps=50, optimizer="sgd", lr=0.05, max_grad_norm=0.0)
    batch = {"a": torch.tensor([1.0]), "b": torch.tensor([[4.0, 4.0]])[0:1]}
    moved = {}
    for mu in (0.0, 5.0):
        s = STRATEGIES.get("fedprox")(StrategyConfig(proximal_mu=mu))
        x = {"w": torch.zeros(2)}
        set_params(model, x)
        res = train_locally(model, task, lambda e: iter([batch]), cfg, s.client_hooks(x, {}, {}))
        moved[mu] = res.params["w"].norm().item()
    # without the term the client reaches b (norm ~5.66); with mu=5 it stops near b / 6
    assert moved[0.0] > 5.0
    assert abs(moved[5.0] - 5.657 / 6) < 0.1
