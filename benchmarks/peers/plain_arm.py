"""The plain-PyTorch arm: FedAvg over a workload's clients in one loop, nothing else.

The seeded cohort, the local training and the evaluation of :mod:`task`, and fedfm's
aggregation: the example-weighted mean of the clients' changes, accumulated in float64
(``x + sum_k w_k (y_k - x)``). The test set is scored after every round, as ``fedfm run``
does. Prints one ``RESULT {...}`` line (the final test metrics); writes nothing.

Usage (``bench.py`` runs it):
    benchmarks/peers/.venv/bin/python benchmarks/peers/plain_arm.py SPEC_JSON
"""

from __future__ import annotations

import json
import sys

import task
import torch


def main(spec: dict) -> None:
    task.set_threads()
    problem = task.load_problem(spec)
    hp = problem.hp
    global_ = {n: t.clone() for n, t in problem.init.items()}
    metrics: dict[str, float] = {}
    for round_ in range(1, hp["rounds"] + 1):
        chosen = task.cohort(hp["seed"], round_, len(problem.clients), hp["cohort"])
        deltas, weights = [], []
        for cid in chosen:
            new, n, _ = task.train_client(problem, global_, round_, cid)
            deltas.append({k: new[k] - global_[k] for k in problem.names})
            weights.append(n)
        total = float(sum(weights))
        for k in problem.names:  # example-weighted mean of the deltas, in float64
            acc = torch.zeros_like(global_[k], dtype=torch.float64)
            for delta, w in zip(deltas, weights, strict=True):
                acc += delta[k].to(torch.float64) * (w / total)
            global_[k] = global_[k] + acc.to(global_[k].dtype)
        metrics = task.evaluate(problem, global_)
        print(f"round {round_}/{hp['rounds']} {json.dumps(metrics)}", flush=True)
    task.report("plain", metrics, threads=torch.get_num_threads())


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
