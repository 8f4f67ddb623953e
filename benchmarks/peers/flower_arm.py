"""The Flower arm: the same workload as a Flower app in Flower's simulation engine.

A ``ClientApp`` whose ``train`` handler runs :func:`task.train_client` for the node's
partition (``node_config["partition-id"]``), and a ``ServerApp`` that runs Flower's
message-API ``FedAvg`` (the example-weighted mean of the clients' params, key
``num-examples``) with a centralised ``evaluate_fn`` on the global test set after every
round and no client-side evaluation. ``flwr.simulation.run_simulation`` runs both, the clients
in Ray actors. Each process (the driver, every actor) builds the problem once and keeps it.

Usage (``bench.py`` runs it):
    benchmarks/peers/.venv/bin/python benchmarks/peers/flower_arm.py SPEC_JSON
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import task
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

SPEC_ENV = "PEERS_SPEC"  # the workload spec, JSON: Ray's workers inherit the environment


def problem() -> task.Problem:
    """This process's problem: the driver's (server) and each actor's own, built once.

    The cache lives in ``task`` (an actor imports it by name), not here: Ray pickles this
    module's functions by value, and a cache here would ship the driver's model and data.
    """
    return task.cached_problem(os.environ[SPEC_ENV])


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    p = problem()
    params = msg.content["arrays"].to_torch_state_dict()
    round_ = int(msg.content["config"]["server-round"])
    cid = int(context.node_config["partition-id"])
    new, n, loss = task.train_client(p, params, round_, cid)
    metrics = {"train_loss": loss, "num-examples": n, "threads": torch.get_num_threads()}
    content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


server_app = ServerApp()
FINAL: dict[str, Any] = {}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    p = problem()
    hp = p.hp

    def evaluate_fn(round_: int, arrays: ArrayRecord) -> MetricRecord | None:
        if round_ == 0:  # fedfm and the plain loop do not score the initial model either
            return None
        metrics = task.evaluate(p, arrays.to_torch_state_dict())
        FINAL.update(metrics)
        print(f"round {round_}/{hp['rounds']} {json.dumps(metrics)}", flush=True)
        return MetricRecord(metrics)

    strategy = FedAvg(
        fraction_train=hp["cohort"] / hp["num_clients"],
        fraction_evaluate=0.0,
        min_available_nodes=hp["num_clients"],
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({n: t.clone() for n, t in p.init.items()}),
        num_rounds=hp["rounds"],
        evaluate_fn=evaluate_fn,
    )
    last = result.train_metrics_clientapp[max(result.train_metrics_clientapp)]
    FINAL["client_threads"] = last["threads"]  # the example-weighted mean: 1.0 if all had one


def run(spec: dict[str, Any]) -> None:
    os.environ[SPEC_ENV] = json.dumps(spec)
    num_clients = problem().hp["num_clients"]  # the server's copy (it scores the test set)
    here = os.path.dirname(os.path.abspath(__file__))  # Ray's workers import `task` too
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    actors = int(spec.get("flower_actors", 1))
    cpus = 2 * actors  # Flower's default client resources: 2 CPUs per actor
    warnings.filterwarnings("ignore")
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={
            "init_args": {"num_cpus": cpus, "num_gpus": 0},
            "client_resources": {"num_cpus": 2, "num_gpus": 0.0},
        },
    )
    task.report("flower", FINAL, actors=actors)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
