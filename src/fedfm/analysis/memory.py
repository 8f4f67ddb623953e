"""Peak resident memory of a piece of work, on Linux.

The peak is read from the kernel's high-water mark ``VmHWM`` in ``/proc/self/status``, reset
before the work by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). This is exact,
costs nothing while the work runs, and sees short spikes a sampling thread would miss.

The measurement is process-wide: memory taken by other threads during ``fn`` counts too, and
only one measurement should be in flight at a time, since each one resets the shared mark.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK = "5"


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    try:
        text = _STATUS.read_text()
    except OSError as exc:
        raise RuntimeError(f"cannot read {_STATUS} (Linux procfs required): {exc}") from exc
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            number, unit = value.split()
            if unit != "kB":
                raise RuntimeError(f"unexpected unit {unit!r} for {field} in {_STATUS}")
            return int(number) * 1024
    raise RuntimeError(f"{field} not found in {_STATUS}")


def _reset_peak() -> None:
    """Reset the process's ``VmHWM`` to its current RSS."""
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK)
    except OSError as exc:
        raise RuntimeError(
            f"cannot reset the peak RSS by writing {_RESET_PEAK!r} to {_CLEAR_REFS} "
            f"(needs Linux >= 4.0 with procfs and write permission): {exc}"
        ) from exc


def rss_bytes() -> int:
    """Current resident set size (``VmRSS``) of this process in bytes.

    Raises:
        RuntimeError: If ``/proc/self/status`` cannot be read or lacks ``VmRSS``.
    """
    return _status_bytes("VmRSS")


def peak_rss_during(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` and measure how far the process's RSS rose above its starting level.

    Args:
        fn: The work to measure, taking no arguments.

    Returns:
        ``(fn(), peak)``, where ``peak`` is ``max(0, VmHWM after fn - VmRSS before fn)`` in
        bytes: the largest extra resident memory held at any moment while ``fn`` ran.

    Raises:
        RuntimeError: If procfs cannot be read or the peak counter cannot be reset (not Linux,
            kernel older than 4.0, or no permission to write ``/proc/self/clear_refs``).
    """
    before = rss_bytes()
    _reset_peak()
    result = fn()
    peak = _status_bytes("VmHWM")
    return result, max(0, peak - before)
