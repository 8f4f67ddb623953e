"""A label as users write it: its name, its id, or its id as text (a CSV cell)."""

from __future__ import annotations

from collections.abc import Sequence


def label_id(value: object, label_names: Sequence[str]) -> int | None:
    """The id of ``value`` among ``label_names``, or ``None`` if it names no label.

    Example:
        >>> [label_id(v, ("neg", "pos")) for v in ("pos", 0, "1", 2, "x", True)]
        [1, 0, 1, None, None, None]
    """
    if isinstance(value, str):
        if value in label_names:
            return list(label_names).index(value)
        value = int(value) if value.isdigit() else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(label_names):
        return value
    return None
