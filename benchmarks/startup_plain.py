"""The small-MLP FedAvg job as a plain PyTorch script: the reference for ``startup.py``.

Torch and numpy only, plus scikit-learn's ``load_digits`` (the data loading fedfm's ``digits``
does too). The same work as ``fedfm run`` on the MLP workload: the same MLP (64 -> 64 -> 10,
ReLU), a 20% test split, an IID split into clients, each keeping ``client_eval_fraction`` of its
examples out of training, a seeded cohort per round, a fresh AdamW per client with gradient
clipping and the balanced-softmax loss (``client.loss = "balanced"``), the example-weighted mean
of the deltas, and the test set scored (loss, accuracy, macro-F1) after every round. It writes
nothing but one line per round. Its numbers match fedfm's in kind, not bit for bit (other
splits and seeds); ``benchmarks/overhead.py`` is the bit-exact comparison of the round loop.

Usage:
    .venv/bin/python benchmarks/startup_plain.py --clients 100 --cohort 10 --rounds 20
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--cohort", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--client-eval-fraction", type=float, default=0.1)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))  # (1797, 64)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = rng.permutation(len(y))
    n_test = round(0.2 * len(y))
    test, train = order[:n_test], order[n_test:]
    clients = []  # each client's training indices (its held-out share is never trained on)
    for part in np.array_split(rng.permutation(train), args.clients):
        clients.append(part[math.ceil(len(part) * args.client_eval_fraction) :])

    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    params = list(model.parameters())
    global_ = [p.detach().clone() for p in params]
    for round_ in range(1, args.rounds + 1):
        cohort = np.random.default_rng([args.seed, round_]).choice(
            args.clients, args.cohort, replace=False
        )
        deltas, weights, losses = [], [], []
        for cid in sorted(cohort.tolist()):
            idx = clients[cid]
            prior = torch.bincount(y[idx], minlength=10).float() / len(idx)
            offset = torch.log(prior.clamp(min=1e-12))  # balanced softmax: logits + log(prior)
            with torch.no_grad():
                for p, g in zip(params, global_, strict=True):
                    p.copy_(g)
            opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
            for _ in range(args.epochs):
                shuffled = np.random.default_rng([args.seed, round_, cid]).permutation(idx)
                for start in range(0, len(shuffled), args.batch_size):
                    batch = shuffled[start : start + args.batch_size]
                    loss = F.cross_entropy(model(x[batch]) + offset, y[batch])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                    opt.step()
                    losses.append(loss.item())
            deltas.append([p.detach() - g for p, g in zip(params, global_, strict=True)])
            weights.append(len(idx))
        total = sum(weights)
        global_ = [
            g + sum(d[k] * (w / total) for d, w in zip(deltas, weights, strict=True))
            for k, g in enumerate(global_)
        ]
        with torch.no_grad():
            for p, g in zip(params, global_, strict=True):
                p.copy_(g)
        print(f"round {round_:>3}/{args.rounds}  {score(model, x[test], y[test], args)}")


@torch.inference_mode()
def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> str:
    """Test loss, accuracy and macro-F1, in batches of ``--eval-batch-size``."""
    step = args.eval_batch_size
    logits = torch.cat([model(x[i : i + step]) for i in range(0, len(y), step)])
    pred = logits.argmax(-1)
    f1s = []
    for label in range(10):
        tp = int(((pred == label) & (y == label)).sum())
        denominator = int((pred == label).sum()) + int((y == label).sum())
        f1s.append(2 * tp / denominator if denominator else 0.0)
    loss = F.cross_entropy(logits, y).item()
    accuracy = (pred == y).float().mean().item()
    return f"acc {accuracy:.4f}  f1 {np.mean(f1s):.4f}  loss {loss:.4f}"


if __name__ == "__main__":
    main()
