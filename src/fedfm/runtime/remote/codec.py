"""Params on the wire: safetensors bytes, cut into chunks behind a checked header.

Everything a remote peer sends is untrusted. :func:`assemble` and :func:`decode_params`
turn any byte string (random, truncated, oversized, mislabelled) into either params that
fit the model or a :class:`CodecError` that says what is wrong; they never raise anything
else.

Example:
    >>> import torch
    >>> data = encode_params({"w": torch.ones(2)})
    >>> header, body = assemble(chunks("update", data, round_=1, chunk_size=8), max_bytes=1024)
    >>> decode_params(body, like={"w": torch.zeros(2)}, max_bytes=1024)["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.errors import FedFMError
from fedfm.models.params import Params
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.strategies.aggregate import mismatches, non_finite

CHUNK_BYTES = 1 << 20  # 1 MiB per message: far below gRPC's 4 MB default
# what params and update pipelines put on the wire (values, codes, positions, masks)
WIRE_DTYPES = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
)


class CodecError(FedFMError, ValueError):
    """A message that cannot be accepted; the text says why (it is logged and sent back)."""


def encode_params(params: Mapping[str, torch.Tensor]) -> bytes:
    """Params as safetensors bytes (CPU, contiguous)."""
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in params.items()})


def encode_groups(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> bytes:
    """Several named groups of params in one payload, each name prefixed ``GROUP/``."""
    return encode_params({f"{g}/{k}": v for g, params in groups.items() for k, v in params.items()})


def split_groups(params: Mapping[str, torch.Tensor], groups: Iterable[str]) -> dict[str, Params]:
    """Undo :func:`encode_groups`: ``{group: params}`` for each of ``groups`` (empty if absent).

    Raises:
        CodecError: a tensor outside every group.
    """
    out: dict[str, Params] = {g: {} for g in groups}
    for name, value in params.items():
        group, _, key = name.partition("/")
        if group not in out or not key:
            want = ", ".join(f"{g}/..." for g in out)
            raise CodecError(f"unexpected tensor {name!r} (want {want})")
        out[group][key] = value
    return out


def chunks(
    kind: str,
    data: bytes,
    *,
    round_: int,
    client_id: str = "",
    meta: Mapping[str, str] | None = None,
    chunk_size: int = CHUNK_BYTES,
) -> Iterator[pb.Chunk]:
    """A header (kind, round, size, SHA-256, meta) then ``data`` in ``chunk_size`` pieces."""
    header = pb.Header(
        kind=kind,
        round=round_,
        client_id=client_id,
        total_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        meta=dict(meta or {}),
    )
    yield pb.Chunk(header=header)
    for start in range(0, len(data), chunk_size):
        yield pb.Chunk(data=data[start : start + chunk_size])


def read_header(stream: Iterator[pb.Chunk], *, max_bytes: int) -> pb.Header:
    """The first chunk of a stream, which must be its header, read alone: the server checks
    who is sending before it reads (and buffers) a byte of the body.

    Raises:
        CodecError: no header first, or a header that announces more than ``max_bytes``.
    """
    first = next(stream, None)
    if first is None or first.WhichOneof("kind") != "header":
        raise CodecError("a stream must start with a header chunk")
    header = first.header
    if header.total_bytes > max_bytes:
        raise CodecError(
            f"the header announces {header.total_bytes:,} bytes, over the limit of {max_bytes:,}"
        )
    return header


def read_body(stream: Iterator[pb.Chunk], header: pb.Header) -> bytes:
    """The data chunks that follow ``header``, checked against it.

    Raises:
        CodecError: a second header, fewer or more bytes than announced, or a SHA-256 that
            does not match.
    """
    parts, size = [], 0
    for chunk in stream:
        if chunk.WhichOneof("kind") != "data":
            raise CodecError("a second header in one stream")
        size += len(chunk.data)
        if size > header.total_bytes:
            raise CodecError(f"more data than the {header.total_bytes:,} bytes announced")
        parts.append(chunk.data)
    if size != header.total_bytes:
        raise CodecError(f"truncated: {size:,} of {header.total_bytes:,} bytes arrived")
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != header.sha256:
        raise CodecError("the data's SHA-256 does not match the header's")
    return data


def assemble(stream: Iterable[pb.Chunk], *, max_bytes: int) -> tuple[pb.Header, bytes]:
    """The header and the data of a chunked stream (:func:`read_header`, :func:`read_body`).

    Raises:
        CodecError: no header first, a second header, more than ``max_bytes``, fewer or more
            bytes than announced, or a SHA-256 that does not match.
    """
    it = iter(stream)
    header = read_header(it, max_bytes=max_bytes)
    return header, read_body(it, header)


def decode_params(
    data: bytes, *, like: Mapping[str, torch.Tensor] | None = None, max_bytes: int
) -> Params:
    """Safetensors bytes back to params, validated.

    Args:
        like: the params the payload must match: the same names, shapes and dtypes.
        max_bytes: the largest payload accepted.

    Raises:
        CodecError: too large, not safetensors, a mismatch with ``like`` (listing every
            problem), or NaN / Inf values.
    """
    if len(data) > max_bytes:
        raise CodecError(f"a payload of {len(data):,} bytes is over the limit of {max_bytes:,}")
    try:
        params = dict(st_load(data))
    except Exception as err:  # safetensors raises several types on bad input
        raise CodecError(f"not a safetensors payload ({type(err).__name__}: {err})") from None
    odd = sorted({str(v.dtype) for v in params.values()} - {str(d) for d in WIRE_DTYPES})
    if odd:  # float8, uint16/32/64, complex: nothing fedfm sends, and ops fail on some
        raise CodecError(f"tensors of dtype {', '.join(odd)}: fedfm sends none of these")
    if like is not None:
        problems = mismatches(params, dict(like))
        if problems:
            shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
            raise CodecError(f"the params do not fit the model: {shown}")
    bad = non_finite(params)
    if bad:
        raise CodecError(f"non-finite values in {', '.join(bad[:5])}")
    return params
