"""The server's intake rules, without a network: a Coordinator fed chunk streams directly."""

import json

import torch
from test_adversarial import _coordinator  # the same digits + MLP job, three clients joined

from fedfm.models.params import payload_bytes
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote.codec import chunks, encode_params


def _update(coord, cid, *, round_=2, session=None, params=None):
    params = params or {
        f"delta/{k}": torch.zeros_like(v) for k, v in coord.job.initial_params.items()
    }
    meta = {
        "session": coord.sessions[cid] if session is None else session,
        "num_examples": "5",
        "metrics": json.dumps({"train_loss": 1.0, "steps": 1}),
    }
    return coord.submit(
        chunks("update", encode_params(params), round_=round_, client_id=cid, meta=meta)
    )


def test_the_server_takes_one_update_per_cohort_member_of_the_open_round(tmp_path):
    coord = _coordinator(tmp_path)
    assert _update(coord, "a").ok and list(coord.arrived) == [0]
    refusals = {
        "a second update from 'a'": _update(coord, "a"),
        "update for round 1, but round 2 is open": _update(coord, "b", round_=1),
        "'c' is not in round 2's cohort": _update(coord, "c"),
        "unknown session for client 'b'": _update(coord, "b", session="stolen"),
        "unexpected tensor": _update(coord, "b", params={"weights": torch.zeros(2)}),
    }
    for reason, ack in refusals.items():
        assert not ack.ok and reason in ack.reason, (reason, ack.reason)
    assert list(coord.arrived) == [0]
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "rejected" for e in events) == len(refusals)


def test_a_client_with_another_backbone_is_refused(tmp_path):
    coord = _coordinator(tmp_path)
    reply = coord.join(pb.JoinRequest(client_id="a", backbone="0" * 16))
    assert not reply.accepted and "is not the server's" in reply.reason


def test_a_compressed_update_travels_in_its_wire_form_and_a_bad_one_is_refused(tmp_path):
    coord = _coordinator(tmp_path, "compression.method=quantize", "compression.bits=4")
    like = coord.like
    delta = {
        k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in like.items()
    }
    wire, _, _ = coord.job.pipeline.client(delta, {}, torch.Generator().manual_seed(2))
    assert payload_bytes(wire) < payload_bytes(delta) / 6  # 4-bit codes, not float32
    assert _update(coord, "a", params={f"wire/{k}": v for k, v in wire.items()}).ok
    got = coord.arrived[0].update.delta
    step = {k: (v.max() - v.min()) / 15 for k, v in delta.items()}  # one 4-bit level
    assert all((got[k] - delta[k]).abs().max() <= step[k] + 1e-6 for k in delta)

    name = next(k for k in wire if k.endswith(".__q"))
    refusals = {
        "the client must send the pipeline's wire form": {
            f"delta/{k}": v for k, v in delta.items()
        },
        "malformed wire form: ['missing": {f"wire/{k}": v for k, v in wire.items() if k != name},
        "shape": {f"wire/{k}": v[:-1] if k == name else v for k, v in wire.items()},
    }
    for reason, params in refusals.items():
        ack = _update(coord, "b", params=params)
        assert not ack.ok and reason in ack.reason, (reason, ack.reason)
    assert list(coord.arrived) == [0]


def test_a_wire_form_is_refused_when_the_server_has_no_pipeline(tmp_path):
    coord = _coordinator(tmp_path)
    params = {f"wire/{k}": v for k, v in coord.like.items()}
    ack = _update(coord, "a", params=params)
    assert not ack.ok and "has no update pipeline" in ack.reason
