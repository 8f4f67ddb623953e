"""Many clients: what a client costs is its indices, and nothing a round keeps or records
grows with the number of clients (``benchmarks/scale.py`` measures 100 to 10,000)."""

import json
import time

import numpy as np
import pytest

from fedfm.config import load_config
from fedfm.data.federation import build_federation
from fedfm.resources.types import Split
from fedfm.runtime.job import build_job
from fedfm.runtime.simulation import RoundState, run_round


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "quantity", "shards"])
def test_ten_thousand_clients_hold_each_example_once_and_build_in_linear_time(partition):
    n = 20_000
    split = Split(inputs=np.zeros((n, 2), np.float32), labels=np.arange(n) % 10)
    cfg = load_config(
        None,
        [
            "data.num_clients=10000",
            "data.min_client_size=1",
            f"data.partition={partition}",
            "data.alpha=100",  # near-IID: a Dirichlet draw that leaves no client empty
        ],
    ).data
    start = time.perf_counter()
    federation = build_federation(split, cfg, seed=0)
    seconds = time.perf_counter() - start
    assert len(federation) == 10_000
    every = np.concatenate([np.concatenate([c.train, c.eval]) for c in federation.clients])
    assert np.array_equal(np.sort(every), np.arange(n))  # each example once, in one client
    assert sum(c.train.nbytes + c.eval.nbytes for c in federation.clients) == 8 * n
    assert seconds < 10.0  # about 0.2 s on 2 cores; an O(clients^2) step takes minutes


def _round(tmp_path, clients):
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            "model.name=mlp",
            "adapter.method=full",
            f"data.num_clients={clients}",
            "data.min_client_size=1",
            "data.partition=iid",
            "strategy.clients_per_round=4",
            "client.steps=1",
            "rounds=2",
            f"output_dir={tmp_path}",
        ],
    )
    job = build_job(cfg)
    state = RoundState(round=0, global_params=job.initial_params)
    records = [run_round(job, state) for _ in range(cfg.rounds)]
    return records, state


def test_a_round_keeps_and_records_nothing_per_client_beyond_its_cohort(tmp_path):
    small, small_state = _round(tmp_path / "small", 8)
    large, large_state = _round(tmp_path / "large", 1_000)
    for state in (small_state, large_state):  # FedAvg: a client leaves no state behind
        assert not state.client_states and not state.personal and not state.pipeline_states
    for a, b in zip(small, large, strict=True):
        assert len(b["cohort"]) == 4
        size = lambda r: len(json.dumps({k: v for k, v in r.items() if k != "cohort"}))  # noqa: E731
        assert abs(size(a) - size(b)) < 64  # the same keys; the values' digits differ
