"""Which transformer layer a trainable tensor belongs to, from its name."""

from __future__ import annotations

import re

_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer layer a tensor belongs to (``...encoder.layer.3.attention...`` → 3).

    Example:
        >>> layer_index("bert.encoder.layer.3.attention.self.query.lora_A.default.weight")
        3
        >>> layer_index("classifier.weight") is None
        True
    """
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def frozen_below(names: list[str], layers: int) -> frozenset[str]:
    """The tensors of every layer but the top ``layers`` (the head and any tensor outside
    the layer stack always train); empty when ``layers`` is 0 or covers them all."""
    if not layers:  # the usual case, on every client's fit and every upload's decode
        return frozenset()
    indices = [i for n in names if (i := layer_index(n)) is not None]
    if not indices:
        return frozenset()
    first = max(indices) + 1 - layers
    return frozenset(n for n in names if (i := layer_index(n)) is not None and i < first)
