import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote.codec import (
    CodecError,
    assemble,
    chunks,
    decode_params,
    encode_groups,
    encode_params,
    split_groups,
)

LIKE = {"a.lora_A": torch.zeros(4, 3), "a.lora_B": torch.zeros(3, 4), "head.bias": torch.zeros(6)}
LIMIT = 1 << 16


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in LIKE.items()}


def test_groups_of_params_share_one_payload_and_split_back_apart():
    delta, extras = _params(1), {"a.lora_A": torch.ones(2)}  # the same name in two groups
    back = split_groups(
        decode_params(encode_groups({"delta": delta, "extras": extras}), max_bytes=LIMIT),
        ("delta", "extras", "more"),
    )
    assert back["more"] == {} and torch.equal(back["extras"]["a.lora_A"], torch.ones(2))
    assert all(torch.equal(back["delta"][k], delta[k]) for k in delta)
    for name in ("weights", "other/w", "delta/"):
        with pytest.raises(
            CodecError, match=r"unexpected tensor .* \(want delta/\.\.\., extras/\.\.\.\)"
        ):
            split_groups({name: torch.zeros(1)}, ("delta", "extras"))


def test_params_survive_a_chunked_round_trip_bit_for_bit():
    params = _params()
    data = encode_params(params)
    stream = list(chunks("update", data, round_=3, client_id="c7", meta={"n": "12"}, chunk_size=50))
    assert len(stream) == 1 + -(-len(data) // 50)
    header, body = assemble(stream, max_bytes=LIMIT)
    assert (header.kind, header.round, header.client_id, dict(header.meta)) == (
        "update",
        3,
        "c7",
        {"n": "12"},
    )
    back = decode_params(body, like=LIKE, max_bytes=LIMIT)
    assert all(torch.equal(back[k], params[k]) for k in LIKE)


def test_a_payload_of_several_megabytes_streams_in_small_chunks():
    big = {"w": torch.randn(3_000_000)}  # 12 MB: over gRPC's 4 MB default message size
    stream = list(chunks("task", encode_params(big), round_=1))
    assert max(len(c.data) for c in stream[1:]) <= 1 << 20
    _, body = assemble(stream, max_bytes=1 << 25)
    assert torch.equal(decode_params(body, max_bytes=1 << 25)["w"], big["w"])


def _stream(data: bytes, **header) -> list[pb.Chunk]:
    fields = {
        "kind": "update",
        "total_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return [pb.Chunk(header=pb.Header(**{**fields, **header})), pb.Chunk(data=data)]


@pytest.mark.parametrize(
    ("stream", "match"),
    [
        ([], "must start with a header"),
        ([pb.Chunk(data=b"x")], "must start with a header"),
        (_stream(b"abc", total_bytes=2), "more data than the 2 bytes"),
        (_stream(b"abc", total_bytes=5), "truncated: 3 of 5 bytes"),
        (_stream(b"abc", sha256="0" * 64), "SHA-256 does not match"),
        (_stream(b"abc", total_bytes=LIMIT + 1), "over the limit"),
        (_stream(b"abc") + [pb.Chunk(header=pb.Header())], "a second header"),
    ],
)
def test_bad_streams_get_a_clear_error(stream, match):
    with pytest.raises(CodecError, match=match):
        assemble(stream, max_bytes=LIMIT)


def test_params_that_do_not_fit_the_model_are_refused_with_every_reason():
    params = _params()
    params["a.lora_A"] = torch.zeros(4, 2)
    params["extra"] = torch.zeros(1)
    del params["head.bias"]
    with pytest.raises(CodecError) as err:
        decode_params(encode_params(params), like=LIKE, max_bytes=LIMIT)
    text = str(err.value)
    assert "missing head.bias" in text and "unknown extra" in text and "shape (4, 2)" in text
    half = {**_params(), "head.bias": torch.zeros(6, dtype=torch.float16)}
    with pytest.raises(CodecError, match="dtype torch.float16"):
        decode_params(encode_params(half), like=LIKE, max_bytes=LIMIT)
    nan = {**_params(), "head.bias": torch.full((6,), float("nan"))}
    with pytest.raises(CodecError, match="non-finite values in head.bias"):
        decode_params(encode_params(nan), like=LIKE, max_bytes=LIMIT)
    with pytest.raises(CodecError, match="over the limit of 10"):
        decode_params(encode_params(_params()), like=LIKE, max_bytes=10)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_get_a_codec_error_and_nothing_else(data):
    with pytest.raises(CodecError):
        decode_params(data, like=LIKE, max_bytes=LIMIT)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_truncated_or_corrupted_payloads_never_crash_the_decoder(cut, flip):
    data = encode_params(_params())
    cut %= len(data)
    with pytest.raises(CodecError):
        decode_params(data[:cut], like=LIKE, max_bytes=LIMIT)
    with pytest.raises(CodecError, match="truncated"):
        assemble(_stream(data[:cut], total_bytes=len(data)), max_bytes=LIMIT)
    flipped = data[:cut] + bytes([data[cut] ^ flip]) + data[cut + 1 :]
    try:  # a flip inside the tensor values can still decode: then it must fit the model
        params = decode_params(flipped, like=LIKE, max_bytes=LIMIT)
    except CodecError:
        return
    assert set(params) == set(LIKE) and all(params[k].shape == LIKE[k].shape for k in LIKE)
