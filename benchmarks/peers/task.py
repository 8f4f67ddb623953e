"""The work both the plain-PyTorch arm and the Flower arm do: one :class:`Problem` per workload.

A problem is the data, the model with its initial weights, the client partition and the
hyperparameters of one ``fedfm run`` config, plus :func:`train_client` (fedfm's local
training: a fresh AdamW, gradient clipping, the balanced-softmax or plain cross-entropy loss,
batches shuffled with fedfm's per-(seed, round, client, epoch) seeds) and :func:`evaluate`
(the global test set).

* ``digits`` workloads (a 64 -> hidden -> 10 MLP): scikit-learn's ``load_digits`` plus a
  workload file that ``bench.py --export`` wrote with fedfm's own ``build_job``: which
  digits rows are fedfm's train and test split, each client's training indices and the
  initial weights. No fedfm import here: the arms pay what a plain script pays.
* ``trec6`` (MiniLM + LoRA): fedfm's ``build_job`` itself (data, tokenisation, model,
  adapter, partition, initial weights), then the same loop over fedfm's own batches.

Imported by ``plain_arm.py`` and ``flower_arm.py`` (the peers venv) and by ``bench.py``
(the project's venv, for the export).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Batch = dict[str, torch.Tensor]


class MLP(nn.Module):
    """fedfm's ``MLPClassifier`` layout (``hidden``, ``classifier``): the same tensor names."""

    def __init__(self, input_dim: int, num_labels: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(input_dim, hidden)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.hidden(x)))  # (B, num_labels)


@dataclass
class Problem:
    """One workload, ready to train.

    Attributes:
        model: trained in place; ``names`` are its trainable tensors (what travels).
        clients: each client's training indices (into the training pool).
        train_labels: the training pool's labels (each client's balanced-softmax prior).
        make_batch: training indices -> a batch with ``labels``.
        logits: (model, batch) -> logits ``(B, num_labels)``.
        test_batches: the test set in evaluation batches.
        hp: seed, rounds, cohort, epochs, batch_size, lr, weight_decay, max_grad_norm.
    """

    model: nn.Module
    names: list[str]
    init: dict[str, torch.Tensor]
    clients: list[np.ndarray]
    train_labels: np.ndarray
    num_labels: int
    make_batch: Callable[[np.ndarray], Batch]
    logits: Callable[[nn.Module, Batch], torch.Tensor]
    test_batches: Callable[[], Iterator[Batch]]
    hp: dict[str, Any]


def set_threads() -> None:
    """One math thread per process (``BENCH_THREADS``): Ray may set its actors' own."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))


def client_seed(seed: int, round_: int, client_id: int, stream: int) -> int:
    """fedfm's ``client_seed``: stream 0 seeds dropout, stream ``1 + epoch`` the shuffle."""
    return int(np.random.default_rng([seed, round_, client_id, stream]).integers(2**31 - 1))


def cohort(seed: int, round_: int, num_clients: int, size: int) -> list[int]:
    """fedfm's seeded cohort (FedAvg's ``select``)."""
    rng = np.random.default_rng([seed, round_])
    return sorted(rng.choice(num_clients, size=size, replace=False).tolist())


# ------------------------------------------------------------------------------ problems


_CACHE: dict[str, Problem] = {}  # per process: a module global, so never pickled with a closure


def cached_problem(spec_json: str) -> Problem:
    """The problem of a JSON workload spec, built once per process (one torch thread)."""
    if spec_json not in _CACHE:
        set_threads()
        _CACHE[spec_json] = load_problem(json.loads(spec_json))
    return _CACHE[spec_json]


def load_problem(spec: dict[str, Any]) -> Problem:
    """The problem of a workload spec (``bench.py``'s ``WORKLOADS`` entry, resolved)."""
    if spec["kind"] == "digits":
        return digits_problem(Path(spec["workload_file"]))
    return fedfm_problem(spec["overrides"])


def digits_problem(path: Path) -> Problem:
    """The MLP workloads: digits rows and partition from the workload file fedfm wrote."""
    from sklearn.datasets import load_digits

    meta = json.loads(path.with_suffix(".json").read_text())
    saved = np.load(path)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    train_x, train_y = torch.from_numpy(x[saved["train_rows"]]), y[saved["train_rows"]]
    test_x = torch.from_numpy(x[saved["test_rows"]])
    test_y = torch.from_numpy(y[saved["test_rows"]])
    ptr = saved["client_ptr"]
    clients = [saved["client_idx"][ptr[i] : ptr[i + 1]] for i in range(len(ptr) - 1)]
    model = MLP(x.shape[1], meta["num_labels"], meta["hidden"])
    init = {n: torch.from_numpy(saved[f"init/{n}"]) for n, _ in model.named_parameters()}
    model.load_state_dict(init)
    labels_t = torch.from_numpy(train_y)
    eval_bs = meta["hp"]["eval_batch_size"]

    def make_batch(idx: np.ndarray) -> Batch:
        t = torch.from_numpy(idx)
        return {"x": train_x[t], "labels": labels_t[t]}

    def test_batches() -> Iterator[Batch]:
        for start in range(0, len(test_y), eval_bs):
            yield {"x": test_x[start : start + eval_bs], "labels": test_y[start : start + eval_bs]}

    return Problem(
        model=model,
        names=list(init),
        init=init,
        clients=clients,
        train_labels=train_y,
        num_labels=meta["num_labels"],
        make_batch=make_batch,
        logits=lambda m, b: m(b["x"]),
        test_batches=test_batches,
        hp=meta["hp"],
    )


def fedfm_problem(overrides: list[str]) -> Problem:
    """A text workload built by fedfm's ``build_job``: the same data, model and weights."""
    from fedfm.config import load_config
    from fedfm.data.batching import batches, collate
    from fedfm.runtime.job import build_job

    job = build_job(load_config(None, overrides))
    model = job.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    init = {n: t.clone() for n, t in job.initial_params.items()}
    if list(init) != names:
        raise RuntimeError(f"fedfm's params {list(init)[:3]}... are not the trainable tensors")
    train, test, cfg = job.train, job.test, job.cfg
    labels = np.asarray(train.labels, dtype=np.int64)

    def make_batch(idx: np.ndarray) -> Batch:
        return collate(train, idx, causal_lm=False)

    def test_batches() -> Iterator[Batch]:  # sorted by length, as fedfm scores
        return batches(test, np.arange(len(test)), batch_size=cfg.eval.batch_size, causal_lm=False)

    return Problem(
        model=model,
        names=names,
        init=init,
        clients=[c.train for c in job.federation.clients],
        train_labels=labels,
        num_labels=job.task.num_labels,
        make_batch=make_batch,
        logits=lambda m, b: m(**{k: v for k, v in b.items() if k != "labels"}).logits,
        test_batches=test_batches,
        hp=hyperparameters(cfg, job.strategy.cohort_size(len(job.federation))),
    )


def hyperparameters(cfg: Any, cohort_size: int) -> dict[str, Any]:
    """What the two arms read from a fedfm ``RunConfig`` (refusing what they do not do)."""
    needed = {
        "client.optimizer": (cfg.client.optimizer, "adamw"),
        "client.steps": (cfg.client.steps, 0),
        "strategy.name": (cfg.strategy.name, "fedavg"),
        "eval.every": (cfg.eval.every, 1),
    }
    for key, (value, want) in needed.items():
        if value != want:
            raise SystemExit(f"{key} = {value!r}: the peer arms do only {want!r}")
    if cfg.client.loss not in ("balanced", "ce"):
        raise SystemExit(f"client.loss = {cfg.client.loss!r}: the peer arms do balanced or ce")
    return {
        "loss": cfg.client.loss,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "num_clients": cfg.data.num_clients,
        "cohort": cohort_size,
        "epochs": cfg.client.epochs,
        "batch_size": cfg.client.batch_size,
        "lr": cfg.client.lr,
        "weight_decay": cfg.client.weight_decay,
        "max_grad_norm": cfg.client.max_grad_norm,
        "eval_batch_size": cfg.eval.batch_size,
    }


# ------------------------------------------------------------------------------ training


def set_trainable(problem: Problem, params: dict[str, torch.Tensor]) -> None:
    live = dict(problem.model.named_parameters())
    with torch.no_grad():
        for name in problem.names:
            live[name].copy_(params[name])


def train_client(
    problem: Problem, params: dict[str, torch.Tensor], round_: int, cid: int
) -> tuple[dict[str, torch.Tensor], int, float]:
    """One client's local training from ``params``: ``(new params, examples, mean loss)``."""
    hp, model = problem.hp, problem.model
    idx = problem.clients[cid]
    set_trainable(problem, params)
    live = dict(model.named_parameters())
    trainable = [live[n] for n in problem.names]
    counts = np.bincount(problem.train_labels[idx], minlength=problem.num_labels)
    prior = torch.as_tensor(counts, dtype=torch.float32) / max(int(counts.sum()), 1)
    offset = torch.log(prior.clamp(min=1e-12))  # balanced softmax: logits + log(prior)
    if hp["loss"] == "ce":
        offset = torch.zeros_like(offset)
    torch.default_generator.manual_seed(client_seed(hp["seed"], round_, cid, 0))  # dropout
    opt = torch.optim.AdamW(trainable, lr=hp["lr"], weight_decay=hp["weight_decay"])
    model.train()
    loss_sum, steps = 0.0, 0
    for epoch in range(hp["epochs"]):
        order = np.random.default_rng(client_seed(hp["seed"], round_, cid, 1 + epoch)).permutation(
            idx
        )
        for start in range(0, len(order), hp["batch_size"]):
            batch = problem.make_batch(order[start : start + hp["batch_size"]])
            logits = problem.logits(model, batch)
            loss = F.cross_entropy(logits + offset.to(logits), batch["labels"])
            loss_sum += loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(trainable, hp["max_grad_norm"])
            opt.step()
            steps += 1
    model.eval()
    new = {n: live[n].detach().clone() for n in problem.names}
    return new, len(idx), loss_sum / max(steps, 1)


@torch.inference_mode()
def evaluate(problem: Problem, params: dict[str, torch.Tensor]) -> dict[str, float]:
    """Test loss, accuracy and macro-F1 of ``params`` on the global test set."""
    set_trainable(problem, params)
    problem.model.eval()
    preds, labels, loss_sum = [], [], 0.0
    for batch in problem.test_batches():
        logits = problem.logits(problem.model, batch).float()
        loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
        preds.append(logits.argmax(-1).numpy())
        labels.append(batch["labels"].numpy())
    pred, y = np.concatenate(preds), np.concatenate(labels)
    f1s = []
    for label in range(problem.num_labels):
        tp = int(((pred == label) & (y == label)).sum())
        denominator = int((pred == label).sum()) + int((y == label).sum())
        f1s.append(2 * tp / denominator if denominator else 0.0)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(np.mean(f1s)),
        "loss": loss_sum / len(y),
    }


def report(arm: str, metrics: dict[str, float], **extra: Any) -> None:
    """The one line ``bench.py`` reads from an arm's output."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    print("RESULT " + json.dumps({"arm": arm, **clean, **extra}), flush=True)
