"""A fuzzer for ``fedfm serve``: crafted and random messages on every call, counted.

Each attempt is one gRPC call with something wrong in it: a stranger's or a forged id, a
missing or guessed session, raw bytes that are no protobuf, a header with any field out of
range, or a well-formed update (a real session, the open round, the right tensors) with one
claim or tensor spoiled. None of them may be accepted, none may raise inside the server
(an ``error`` event) and none may hang (a call past its timeout).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import torch

from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.codec import chunks, encode_params

TIMEOUT = 10.0  # seconds: a call still running then counts as a hang


@dataclass
class Target:
    """What the fuzzer knows: a real client's credentials, the round and the tensors."""

    channel: grpc.Channel
    client_id: str
    token: str
    like: dict[str, torch.Tensor]  # the global params (names, shapes, dtypes)
    round: int = 1


def _text(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return ""
    if kind == 1:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 40)))
    if kind == 2:
        return "\n\x1b[31m[/bold][red]" + "é\u202e" * rng.randrange(1, 5)
    if kind == 3:
        return "../../" + "x" * rng.randrange(1, 10)
    return "A" * rng.choice((100, 10_000, 1_000_000))


def _number(rng: random.Random) -> str:
    return rng.choice(
        ["-1000", "0", "1001", "-1", "abc", "", "1e3", "nan", str(2**70), " 5", "5.5", "٣"]
    )


def _metrics(rng: random.Random) -> str:
    return rng.choice(
        [
            "{}",
            '{"train_loss": NaN}',
            '{"train_loss": "x"}',
            '{"train_loss": [1]}',
            '{"train_loss": true}',
            '{"train_loss": {"a": 1}}',
            "[1, 2]",
            "not json",
            "[" * 5000,
            json.dumps({f"m{i}": 1.0 for i in range(100)} | {"train_loss": 1.0}),
            '{"train_loss": 1e999}',
        ]
    )


def _spoiled_tensors(rng: random.Random, like: dict[str, torch.Tensor]) -> dict:
    name = rng.choice(sorted(like))
    good = {f"delta/{k}": torch.zeros_like(v) for k, v in like.items()}
    kind = rng.randrange(7)
    if kind == 0:
        good[f"delta/{name}"] = torch.full_like(like[name], float("nan"))
    elif kind == 1:
        good[f"delta/{name}"] = torch.zeros(like[name].numel() + 1)
    elif kind == 2:
        del good[f"delta/{name}"]
    elif kind == 3:
        good["delta/planted"] = torch.zeros(3)
    elif kind == 4:
        good[f"delta/{name}"] = torch.zeros(like[name].shape, dtype=torch.float8_e4m3fn)
    elif kind == 5:
        good[f"delta/{name}"] = torch.zeros(like[name].shape, dtype=torch.uint16)
    else:
        good["extras/dc.x"] = torch.zeros(2)
    return good


def _good_meta(session: str) -> dict[str, str]:
    return {"session": session, "num_examples": "10", "metrics": '{"train_loss": 1.0}'}


def _spoiled_meta(rng: random.Random, session: str) -> dict[str, str]:
    meta = _good_meta(session)
    field = rng.choice(["num_examples", "metrics", "bytes_up", "rank", "unknown", "drop"])
    if field == "metrics":
        meta["metrics"] = _metrics(rng)
        if meta["metrics"] == "{}":
            meta["metrics"] = '{"loss": 1.0}'  # no train_loss
    elif field == "unknown":
        meta[_text(rng)[:50] or "x"] = "1"
    elif field == "drop":
        del meta["num_examples"]
    elif field == "bytes_up":
        meta["bytes_up"] = rng.choice(["-5", str(2**40)])
    elif field == "rank":
        meta["rank"] = rng.choice(["-1", "99999"])
    else:
        meta["num_examples"] = rng.choice(["-1000", "0", "abc", "", str(2**70), "1e3"])
    return meta


class Fuzzer:
    """Sends ``n`` bad calls to ``target`` and counts how the server answered each."""

    def __init__(self, target: Target, seed: int = 0) -> None:
        self.t, self.rng = target, random.Random(seed)
        self.stub = pb_grpc.FederationStub(target.channel)
        self.raw = target.channel.stream_unary(
            "/fedfm.Federation/SendUpdate",
            request_serializer=lambda b: b,
            response_deserializer=pb.Ack.FromString,
        )
        self.counts: Counter[str] = Counter()
        self.session = ""  # a real session (from Join with the real backbone): deeper attacks

    def _real_session(self) -> str:
        return self.session  # set by the caller: a real client's session

    def _update(self, stream: Iterator[pb.Chunk]) -> pb.Ack:
        return self.stub.SendUpdate(stream, timeout=TIMEOUT)

    def attempts(self) -> list[Callable[[], object]]:
        rng, t = self.rng, self.t

        def stranger_config() -> object:
            return self.stub.GetConfig(
                pb.JoinRequest(client_id=_text(rng), token=_text(rng)), timeout=TIMEOUT
            )

        def forged_join() -> object:
            return self.stub.Join(
                pb.JoinRequest(client_id=t.client_id, token=_text(rng), backbone=_text(rng)),
                timeout=TIMEOUT,
            )

        def guessed_task() -> object:
            session = rng.choice(["", _text(rng)])
            request = pb.TaskRequest(
                client_id=rng.choice([t.client_id, _text(rng)]), session=session
            )
            return list(self.stub.GetTask(request, timeout=TIMEOUT))

        def garbage() -> object:
            return self.raw(iter([rng.randbytes(rng.randrange(1, 300))]), timeout=TIMEOUT)

        def crafted_header() -> object:
            data = rng.randbytes(rng.randrange(0, 200))
            header = pb.Header(
                kind=rng.choice(["update", "task", "", _text(rng)[:100]]),
                round=rng.randrange(-(2**31), 2**31),
                client_id=rng.choice([t.client_id, _text(rng)]),
                total_bytes=rng.choice([len(data), 0, 2**64 - 1, len(data) + 1]),
                sha256=rng.choice([hashlib.sha256(data).hexdigest(), _text(rng)[:100]]),
                meta={"session": rng.choice(["", _text(rng)[:100]]), "num_examples": _number(rng)},
            )
            parts = [pb.Chunk(header=header), pb.Chunk(data=data)]
            if rng.random() < 0.2:
                parts.append(pb.Chunk(header=header))
            return self._update(iter(parts))

        def spoiled_claims() -> object:
            body = encode_params({f"delta/{k}": torch.zeros_like(v) for k, v in t.like.items()})
            meta = _spoiled_meta(rng, self._real_session())
            return self._update(
                chunks("update", body, round_=t.round, client_id=t.client_id, meta=meta)
            )

        def spoiled_tensors() -> object:
            body = encode_params(_spoiled_tensors(rng, t.like))
            meta = _good_meta(self._real_session())
            return self._update(
                chunks("update", body, round_=t.round, client_id=t.client_id, meta=meta)
            )

        def spoiled_stream() -> object:
            body = encode_params({f"delta/{k}": torch.zeros_like(v) for k, v in t.like.items()})
            parts = list(
                chunks(
                    "update",
                    body,
                    round_=t.round,
                    client_id=t.client_id,
                    meta=_good_meta(self._real_session()),
                    chunk_size=64,
                )
            )
            cut = rng.randrange(3)
            if cut == 0:
                parts = parts[:-1]  # truncated
            elif cut == 1:
                parts[1] = pb.Chunk(data=bytes(len(parts[1].data)))  # SHA-256 mismatch
            else:
                parts.insert(2, parts[0])  # a second header
            return self._update(iter(parts))

        def wrong_round() -> object:
            body = encode_params({f"delta/{k}": torch.zeros_like(v) for k, v in t.like.items()})
            round_ = rng.choice([-1, 0, t.round + 1, 2**31 - 1])
            meta = _good_meta(self._real_session())
            return self._update(
                chunks("update", body, round_=round_, client_id=t.client_id, meta=meta)
            )

        calls = [stranger_config, forged_join, guessed_task, garbage, crafted_header]
        if self.session:
            calls += [spoiled_claims, spoiled_tensors, spoiled_stream, wrong_round]
        return calls

    def run(self, n: int) -> Counter[str]:
        """``n`` attempts; counts of ``refused``, ``accepted`` (a bad call let through),
        ``internal`` (the server's own error status) and ``hang``."""
        calls = self.attempts()
        for _ in range(n):
            call = self.rng.choice(calls)
            self.counts["attempts"] += 1
            try:
                reply = call()
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self.counts["hang"] += 1
                elif code == grpc.StatusCode.INTERNAL and "failed on the server" in str(
                    err.details()
                ):
                    self.counts["internal"] += 1
                else:  # e.g. grpc's own "Exception deserializing request!", RESOURCE_EXHAUSTED
                    self.counts["refused"] += 1
                continue
            ok = _accepted(reply)
            self.counts["accepted" if ok else "refused"] += 1
        return self.counts


def _accepted(reply: object) -> bool:
    if isinstance(reply, pb.Ack | pb.ConfigReply):
        return reply.ok
    if isinstance(reply, pb.JoinReply):
        return reply.accepted
    if isinstance(reply, list):  # a task stream: only "refused" or "wait" may come back
        return any(c.WhichOneof("kind") == "header" and c.header.kind == "task" for c in reply)
    return True
