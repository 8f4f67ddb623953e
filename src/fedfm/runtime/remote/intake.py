"""What a remote client says about its update, checked before it counts.

An update's header carries, beside its tensors, the client's claims: how many examples it
trained on (its FedAvg weight), its training metrics, the bytes it uploaded and the LoRA
rank it trained. Every claim is untrusted. :func:`read_claims` turns the header's string
map into typed values within the round's limits, or raises a
:class:`~fedfm.runtime.remote.codec.CodecError` that says which field is wrong and why.
:func:`printable` makes any client-supplied string safe for a log line or the console.

Example:
    >>> limits = Limits(max_examples=1000, max_rank=8, dpsgd=False)
    >>> meta = {"num_examples": "12", "metrics": '{"train_loss": 0.5, "steps": 1}'}
    >>> read_claims(meta, limits, payload_bytes=400).num_examples
    12
    >>> printable("[/bold]\\x1b[31m" + "x" * 300, limit=20)
    '[/bold]\\\\x1b[31mxxxxxxxx... (+292 chars)'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedfm.runtime.remote.codec import CodecError

MAX_METRICS = 32  # metrics a client may report per update
MAX_NAME = 64  # characters in a metric's name
MAX_META = 16  # header fields an update may carry
MAX_META_VALUE = 4096  # characters in one header field (the metrics' JSON included)
KNOWN_META = frozenset({"session", "num_examples", "metrics", "bytes_up", "rank"})


@dataclass(frozen=True)
class Limits:
    """What a round accepts from one client.

    Attributes:
        max_examples: the largest FedAvg weight a client may claim (``remote.max_examples``).
        max_rank: the model's LoRA rank (a client trains its first ``rank`` components).
        dpsgd: the run accounts DP-SGD steps, so every update must report ``steps``.
    """

    max_examples: int
    max_rank: int
    dpsgd: bool


@dataclass(frozen=True)
class Claims:
    """An update's header fields, typed and checked."""

    num_examples: int
    metrics: dict[str, float]
    bytes_up: int
    rank: int


def printable(value: object, *, limit: int = 200) -> str:
    """``value`` as text safe for a log or a terminal: at most ``limit`` characters (the rest
    counted), every character outside printable ASCII escaped (no newlines, no ANSI codes).
    Printable text passes unchanged, so applying it twice changes nothing."""
    text = str(value)
    cut = len(text) - limit
    shown = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text[:limit])
    return shown + (f"... (+{cut} chars)" if cut > 0 else "")


def _integer(meta: Mapping[str, str], key: str, default: str | None = None) -> int:
    raw = meta.get(key, default)
    if raw is None:
        raise CodecError(f"the update header has no {key}")
    if len(raw) > 20 or not raw.strip().lstrip("-").isdigit():
        raise CodecError(f"{key} = '{printable(raw, limit=40)}' is not an integer")
    return int(raw)


def _metrics(raw: str, limits: Limits) -> dict[str, float]:
    try:
        metrics = json.loads(raw)
    except (ValueError, RecursionError):
        raise CodecError("metrics is not JSON") from None
    if not isinstance(metrics, dict):
        raise CodecError(f"metrics must be a JSON object of numbers, not {type(metrics).__name__}")
    if len(metrics) > MAX_METRICS:
        raise CodecError(f"{len(metrics)} metrics, over the limit of {MAX_METRICS}")
    out = {}
    for name, value in metrics.items():
        if len(name) > MAX_NAME:
            raise CodecError(f"a metric name of {len(name)} characters (limit {MAX_NAME})")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            shown = printable(name, limit=40)
            raise CodecError(
                f"metric '{shown}' = {printable(value, limit=40)} is not a finite number"
            )
        out[name] = float(value)
    needed = ("train_loss", "steps") if limits.dpsgd else ("train_loss",)
    missing = [k for k in needed if k not in out]
    if missing:
        raise CodecError(f"metrics lack {', '.join(missing)}")
    if out.get("steps", 0) < 0:
        raise CodecError(f"metric steps = {out['steps']} is negative")
    return out


def read_claims(meta: Mapping[str, str], limits: Limits, *, payload_bytes: int) -> Claims:
    """The update header's claims, checked against ``limits``.

    Args:
        meta: the header's string map, as it arrived.
        payload_bytes: the size of the body that arrived, which bounds the claimed upload.

    Raises:
        CodecError: an unknown or oversized field, a count out of its range, metrics that are
            not a flat object of finite numbers (with ``train_loss``, and ``steps`` under
            DP-SGD).
    """
    if len(meta) > MAX_META:
        raise CodecError(f"{len(meta)} header fields, over the limit of {MAX_META}")
    unknown = sorted(set(meta) - KNOWN_META)
    if unknown:
        raise CodecError(f"unknown header field '{printable(unknown[0], limit=40)}'")
    long = [k for k, v in meta.items() if len(v) > MAX_META_VALUE]
    if long:
        raise CodecError(f"header field {long[0]} is over {MAX_META_VALUE} characters")
    num_examples = _integer(meta, "num_examples")
    if not 0 < num_examples <= limits.max_examples:
        raise CodecError(
            f"num_examples = {num_examples} is outside [1, {limits.max_examples}] "
            "(remote.max_examples bounds a client's weight)"
        )
    bytes_up = _integer(meta, "bytes_up", str(payload_bytes))
    if not 0 <= bytes_up <= payload_bytes:
        raise CodecError(f"bytes_up = {bytes_up} is outside [0, the {payload_bytes} bytes sent]")
    rank = _integer(meta, "rank", "0")
    if not 0 <= rank <= limits.max_rank:
        raise CodecError(f"rank = {rank} is outside [0, adapter.rank = {limits.max_rank}]")
    return Claims(num_examples, _metrics(meta.get("metrics", "{}"), limits), bytes_up, rank)
