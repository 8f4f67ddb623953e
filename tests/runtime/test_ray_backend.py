"""The Ray backend gives the in-process run's metrics and params for the same seed."""

import contextlib
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file

from fedfm.config import load_config
from fedfm.errors import ConfigError, FedFMError
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir

pytest.importorskip("ray")

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=12",
    "strategy.clients_per_round=6",
    "client.lr=0.05",
    "client.optimizer=sgd",
    "rounds=3",
    "eval.per_client=true",
]
# state in every place a client keeps or gets it: SCAFFOLD's control variates (client state
# and payload), error feedback (pipeline state), the adaptive clip norm (client context)
STATEFUL = {
    "scaffold": ["strategy.name=scaffold", "compression.method=quantize", "compression.bits=4"],
    "adaptive-dp": [
        "privacy.noise=central",
        "privacy.noise_multiplier=0.3",
        "privacy.adaptive_clip=true",
        "privacy.clip=0.5",
    ],
}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the backend uses a running Ray and leaves it running)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(tmp_path, name, *extra, **kwargs):
    cfg = load_config(None, [*FAST, f"output_dir={tmp_path}", f"name={name}", *extra])
    summary = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False), **kwargs)
    records = [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in read_records(tmp_path / name / "metrics.jsonl")
    ]
    return summary, records, load_file(tmp_path / name / "adapter.safetensors")


@pytest.mark.parametrize("kind", list(STATEFUL))
def test_ray_gives_the_in_process_metrics_and_params(tmp_path, local_ray, kind):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: float sums then match bit for bit
    try:
        local = _run(tmp_path, "local", *STATEFUL[kind])
        ray = _run(tmp_path, "ray", *STATEFUL[kind], "backend=ray", "ray.workers=2")
    finally:
        torch.set_num_threads(threads)
    assert ray[1] == local[1]  # every round's metrics, client metrics and exclusions
    if kind == "adaptive-dp":  # the clip norm moved, so the context reached the workers
        assert len({r["dp_clip"] for r in local[1]}) == len(local[1])
    assert ray[0]["final"] == local[0]["final"]
    assert all(torch.equal(ray[2][k], local[2][k]) for k in local[2])


def test_fedbuff_on_ray_gives_the_in_process_steps_and_params(tmp_path, local_ray):
    # stale updates (half the clients 4x slower), and error feedback's residual kept per client
    fedbuff = [
        "asynchronous.enabled=true",
        "asynchronous.concurrency=6",
        "asynchronous.buffer=3",
        "system.speeds=[1.0, 0.25]",
        "compression.method=quantize",
        "compression.bits=4",
        "compression.error_feedback=true",
        "rounds=4",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: float sums then match bit for bit
    try:
        local = _run(tmp_path, "local", *fedbuff)
        ray = _run(tmp_path, "ray", *fedbuff, "backend=ray", "ray.workers=2")
    finally:
        torch.set_num_threads(threads)
    assert any(r["staleness_max"] > 0 for r in local[1])
    assert ray[1] == local[1]  # every step's staleness, clock, metrics and bytes
    assert all(torch.equal(ray[2][k], local[2][k]) for k in local[2])

    # a worker killed with several dealt clients on it: replaced once, every client dealt again
    import ray as ray_

    from fedfm.runtime.transports.ray import WorkerPool

    killed, pools = [], []

    class Dying(WorkerPool):
        def arrival(self, job, server):
            if server.version == 1 and not killed:
                killed.append(self.actors[0]._actor_id)
                ray_.kill(self.actors[0])
            return super().arrival(job, server)

    @contextlib.contextmanager
    def dying(job, run_dir, console):
        pool = Dying(job, console)
        pools.append(pool)
        try:
            yield pool
        finally:
            pool.close()

    torch.set_num_threads(1)
    try:
        again = _run(tmp_path, "dying", *fedbuff, "backend=ray", "ray.workers=2", backend=dying)
    finally:
        torch.set_num_threads(threads)
    assert killed and killed[0] not in [a._actor_id for a in pools[0].actors]  # replaced
    assert again[1] == local[1]  # nobody excluded, the same steps
    assert all(torch.equal(again[2][k], local[2][k]) for k in local[2])


def test_dead_workers_are_replaced_and_their_clients_dealt_again(tmp_path, local_ray):
    import ray as ray_

    from fedfm.runtime.simulation import Transport
    from fedfm.runtime.transports.ray import WorkerPool

    pools = []

    @contextlib.contextmanager
    def workers_that_die(job, run_dir, console):
        pool = WorkerPool(job, console)
        pools.append((pool, [a._actor_id for a in pool.actors]))

        class Dying(Transport):
            def fit(self, job, state, plan, clients):
                if plan.round == 3:  # a worker found dead when the round begins
                    ray_.kill(pool.actors[1])
                victims = [pool.actors[0]] if plan.round == 2 else []
                for fitted in pool.fit(job, state, plan, clients):
                    yield fitted
                    while victims:  # round 2: a worker dies while it trains a client
                        ray_.kill(victims.pop())

        try:
            yield Dying()
        finally:
            pool.close()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = _run(tmp_path, "local", *STATEFUL["scaffold"])
        ray = _run(
            tmp_path,
            "ray",
            *STATEFUL["scaffold"],
            "backend=ray",
            "ray.workers=2",
            backend=workers_that_die,
        )
    finally:
        torch.set_num_threads(threads)
    ((pool, first),) = pools
    assert sum(a._actor_id not in first for a in pool.actors) == 2  # both were replaced
    assert ray[1] == local[1]  # nobody excluded: every client of the dead workers trained again
    assert all(torch.equal(ray[2][k], local[2][k]) for k in local[2])


def test_the_broadcast_carries_the_clip_norm_and_the_backbone_delta(tmp_path):
    overrides = [*FAST, *STATEFUL["adaptive-dp"]]
    server, worker = (build_job(load_config(None, overrides)) for _ in range(2))
    name, weight = next(iter(server.model.named_parameters()))
    server.dp.clip = 0.123
    server.strategy.backbone_delta = lambda: {name: torch.ones_like(weight)}
    before = dict(worker.model.named_parameters())[name].detach().clone()
    worker.adopt_broadcast(server.broadcast())
    assert worker.dp.clip == 0.123
    after = dict(worker.model.named_parameters())[name]
    assert torch.equal(after, before + worker.lora_scale * torch.ones_like(before))


def test_without_ray_installed_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    cfg = load_config(None, [*FAST, f"output_dir={tmp_path}", "backend=ray"])
    with pytest.raises(ConfigError, match=r'needs Ray: pip install "ray>=2.60"'):
        execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False))


def test_a_cluster_address_that_nothing_answers_fails_fast_and_says_so(tmp_path):
    port = _closed_port()
    cfg = load_config(
        None, [*FAST, f"output_dir={tmp_path}", "backend=ray", f"ray.address=127.0.0.1:{port}"]
    )
    with pytest.raises(FedFMError, match=f"nothing answers at 127.0.0.1:{port}"):
        execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once the socket closes
