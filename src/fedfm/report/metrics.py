"""The per-round metrics log of a run: ``runs/<name>/metrics.jsonl``.

One JSON object per line, one line per completed round. Appends are flushed and fsynced, so a
crash never loses a round that was already logged; at worst it leaves a partial last line,
which :func:`read_records` skips and :class:`MetricsLog` cuts off before appending again.

Non-finite floats (NaN, +Inf, -Inf), e.g. the loss of a diverged round, are written as JSON
``null``: Python's default would write the bare tokens ``NaN``/``Infinity``, which are not JSON
and break every other reader (``jq``, pandas with a strict parser, JavaScript). Readers get
``None`` back for such values; plots skip those points instead of crashing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.errors import FedFMError
from fedfm.io import atomic_write_bytes, atomic_write_text


def to_jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON types, with NaN and ±Inf replaced by ``None``.

    Handles nested dicts, lists and tuples, and numpy scalars (anything with ``.item()`` that
    returns a Python scalar). Dict keys become strings. The input is not modified.

    Args:
        value: A record or any value inside one.

    Returns:
        A copy made only of ``dict``, ``list``, ``str``, ``int``, finite ``float``, ``bool``
        and ``None``; other types are returned unchanged (``json.dumps`` then names them).

    Example:
        >>> to_jsonable({"loss": float("nan"), "cohort": (1, 2)})
        {'loss': None, 'cohort': [1, 2]}
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return to_jsonable(item())
        except (TypeError, ValueError):  # arrays with more than one element
            return value
    return value


def dumps_record(record: Mapping[str, Any]) -> str:
    """Serialise one record as a single JSON line (no trailing newline), NaN/Inf as ``null``."""
    try:
        return json.dumps(to_jsonable(record), allow_nan=False, separators=(", ", ": "))
    except TypeError as err:
        raise FedFMError(
            f"metrics record for round {record.get('round')!r} holds a value JSON cannot "
            f"store ({err}); log plain numbers, strings, lists and dicts."
        ) from err


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every complete record of a metrics log.

    A trailing line that is not newline-terminated and does not parse (a write cut short by a
    crash) is skipped. A bad line anywhere else is corruption and raises.

    Args:
        path: The ``metrics.jsonl`` file.

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FedFMError: A line other than a partial last one is not a JSON object.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    # After split, the last element is "" when the file ends with a newline; otherwise it is
    # an unterminated tail that may be a partial write.
    tail = lines.pop()
    records = [_parse_line(path, i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if tail.strip():
        with contextlib.suppress(FedFMError):  # a partial last line from an interrupted append
            records.append(_parse_line(path, len(lines) + 1, tail))
    return records


def _parse_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    """Parse one line of ``path`` as a JSON object, or raise naming the file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise FedFMError(
            f"{path}:{lineno} is not valid JSON ({err.msg}); the metrics log is corrupt. "
            "Delete or fix that line."
        ) from err
    if not isinstance(record, dict):
        raise FedFMError(f"{path}:{lineno} is not a JSON object; the metrics log is corrupt.")
    return record


class MetricsLog:
    """Append-only writer of a run's ``metrics.jsonl``.

    Each :meth:`append` writes one line, then flushes and fsyncs, so a crash never loses a
    completed round. Opening a log whose last line is partial (an earlier crash mid-write)
    cuts that line off first, so new records never get glued onto it.

    Args:
        path: The ``metrics.jsonl`` file; it and its folder are created on first append.

    Example:
        >>> log = MetricsLog(tmp_path / "metrics.jsonl")  # doctest: +SKIP
        >>> log.append({"round": 1, "train_loss": 0.7})  # doctest: +SKIP
        >>> log.truncate_after(0)  # resume from a checkpoint taken before round 1  # doctest: +SKIP
        >>> log.records()  # doctest: +SKIP
        []
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._drop_partial_tail()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one round's record as one line and make it durable.

        Args:
            record: A flat dict with at least an integer ``"round"``; not modified.

        Raises:
            FedFMError: ``record`` has no integer ``"round"`` or holds a non-JSON value.
        """
        _check_round(record)
        line = dumps_record(record) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Return every complete record logged so far (``[]`` if nothing was logged)."""
        return read_records(self.path) if self.path.exists() else []

    def truncate_after(self, round: int) -> None:
        """Keep only records with ``record["round"] <= round``, rewriting the file atomically.

        Used when a run resumes from a checkpoint older than the last logged round, so the
        rounds about to be re-run are not logged twice.

        Args:
            round: The last round to keep (the checkpoint's round; 0 keeps only the
                round-0 record of the initial evaluation, if any).
        """
        if not self.path.exists():
            return
        kept = [r for r in self.records() if _round_of(r) <= round]
        atomic_write_text(self.path, "".join(dumps_record(r) + "\n" for r in kept))

    def _drop_partial_tail(self) -> None:
        """Cut off an unterminated last line left by a crash mid-append."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            atomic_write_bytes(self.path, data[: data.rfind(b"\n") + 1])


def _check_round(record: Mapping[str, Any]) -> None:
    """Raise unless ``record`` has an integer ``"round"``."""
    value = record.get("round")
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedFMError(
            f"metrics record needs an integer 'round' key, got round={value!r}; "
            "pass the round number the record belongs to."
        )


def _round_of(record: Mapping[str, Any]) -> float:
    """Return a logged record's round; a record without one counts as +inf (never kept)."""
    value = record.get("round")
    return value if isinstance(value, int) and not isinstance(value, bool) else math.inf
