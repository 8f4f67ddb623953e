"""The one round driver and its transports: a registry keyed by ``backend``, one protocol,
uploads in their wire form decoded once by the server."""

import contextlib

import pytest
import torch

from fedfm.client.state import ClientState
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.models.params import payload_bytes
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.runtime.simulation import RoundState, Transport, run_round
from fedfm.runtime.transports import TRANSPORTS, in_process

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=6",
    "rounds=2",
    "data.max_train_examples=300",
]


def test_every_backend_is_a_registered_transport_and_a_wrong_one_is_named():
    assert TRANSPORTS.names() == ["ray", "remote", "simulation"]
    wrong = r"unknown transport backend = 'rey'\. Did you mean 'ray'"
    with pytest.raises(ConfigError, match=wrong):
        TRANSPORTS.get("rey", field="backend")


def test_a_transport_plugged_in_runs_the_same_rounds_and_adds_its_record(tmp_path):
    """An opener given to ``execute`` is all a new transport needs; here one that counts the
    clients it carries, in process."""
    carried = []

    class Counting(Transport):
        def fit(self, job, state, plan, clients):
            carried.append(len(clients))
            yield from in_process.InProcess().fit(job, state, plan, clients)

        def record(self):
            return {"carried": carried[-1]}

    @contextlib.contextmanager
    def open_counting(job, run_dir, console):
        yield Counting()

    runs = {}
    for name, backend in (("plain", None), ("counting", open_counting)):
        cfg = load_config(None, [*FAST, f"output_dir={tmp_path}", f"name={name}"])
        runs[name] = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False), backend=backend)
    assert runs["counting"]["final"] == runs["plain"]["final"]
    assert carried == [3, 3]
    last = (tmp_path / "counting" / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"carried": 3' in last


def test_an_upload_travels_compressed_and_the_server_decodes_it_once(monkeypatch):
    job = build_job(load_config(None, [*FAST, "compression.method=topk"]))
    decoded = []
    real = in_process.decode_upload

    def counting(job, upload, **kwargs):
        decoded.append(upload)
        return real(job, upload, **kwargs)

    monkeypatch.setattr(in_process, "decode_upload", counting)
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    assert len(decoded) == len(record["cohort"])  # once per upload
    for upload in decoded:
        # the wire form: values and indices of the top 10%, a fraction of the dense delta
        assert payload_bytes(upload.wire) < payload_bytes(job.initial_params) / 4
        assert upload.bytes_up == payload_bytes({**upload.wire, **upload.extras})
    assert record["bytes_up"] == sum(u.bytes_up for u in decoded)


def test_the_client_half_reads_a_narrow_context_and_keeps_its_own_state():
    from fedfm.client.fit import fit

    job = build_job(load_config(None, [*FAST, "compression.method=quantize"]))
    ctx = job.client_context()
    client = job.federation[0]
    upload, kept = fit(ctx, client, job.initial_params, {}, ClientState(), 1)
    assert upload.client_id == 0 and upload.num_examples == client.num_examples
    assert kept.pipeline and all(k.startswith("compress/") for k in kept.pipeline)  # residual
    again, _ = fit(ctx, client, job.initial_params, {}, ClientState(), 1)
    assert all(torch.equal(upload.wire[k], again.wire[k]) for k in upload.wire)  # seeded
