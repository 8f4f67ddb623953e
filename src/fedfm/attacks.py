"""Simulated malicious clients: data poisoning (label flipping, a text backdoor) and model
poisoning (sign flipping, scaling for model replacement, random noise).

The malicious set is a seeded, fixed share of the federation. Data attacks train on a
poisoned copy of the client's examples (indices past ``offset`` into the training pool);
model attacks rewrite the client's delta before its update pipeline, i.e. the attacker runs
honest client code on a malicious delta (client-side DP clipping still bounds it; a server
that must not trust its clients uses ``robust.norm_bound`` or a robust aggregator).
"""

from __future__ import annotations

import numpy as np
import torch

from fedfm.config import AttackConfig
from fedfm.data.batching import Encoded, encode
from fedfm.errors import ConfigError
from fedfm.models.params import Params
from fedfm.resources.types import Split

DATA_ATTACKS = ("label_flip", "backdoor")
TRIGGER_ROOM = 8  # extra tokens allowed for the trigger phrase when texts are re-encoded
MODEL_ATTACKS = ("sign_flip", "scale", "noise")


def malicious_clients(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """``round(fraction * n)`` clients (at least one when ``fraction > 0``), seeded.

    Example:
        >>> sorted(malicious_clients(10, 0.3, seed=0)) == sorted(malicious_clients(10, 0.3, 0))
        True
    """
    if fraction <= 0:
        return frozenset()
    count = max(1, round(fraction * num_clients))
    order = np.random.default_rng([seed, 7]).permutation(num_clients)
    return frozenset(int(c) for c in order[:count])


def poison_delta(delta: Params, cfg: AttackConfig, generator: torch.Generator) -> Params:
    """A model attack's delta in place of the honest one."""
    if cfg.kind == "sign_flip":
        return {k: -cfg.scale * v for k, v in delta.items()}
    if cfg.kind == "scale":
        return {k: cfg.scale * v for k, v in delta.items()}
    if cfg.kind == "noise":
        return {
            k: (torch.randn(v.shape, generator=generator) * cfg.noise_std).to(v.dtype)
            for k, v in delta.items()
        }
    raise ValueError(f"attack.kind = {cfg.kind!r} is not a model attack")


def _check_labels(cfg: AttackConfig, num_labels: int) -> None:
    if not 0 <= cfg.target_label < num_labels:
        raise ConfigError(
            f"attack.target_label = {cfg.target_label} is not a class of this dataset "
            f"(0..{num_labels - 1})"
        )


def with_trigger(texts: list[str], trigger: str) -> list[str]:
    return [f"{trigger} {t}" for t in texts]


def poisoned_pool(
    train: Split,
    encoded: Encoded,
    tokenizer,  # noqa: ANN001
    cfg: AttackConfig,
    num_labels: int,
) -> Encoded:
    """The poisoned copy of every training example: flipped labels (``c -> C - 1 - c``), or
    the trigger in front of the text with the target label."""
    if encoded.labels is None:
        raise ConfigError(f"attack.kind = {cfg.kind!r} needs a labelled (classification) dataset")
    if cfg.kind == "label_flip":
        return Encoded(
            encoded.ids, encoded.features, num_labels - 1 - encoded.labels, encoded.pad_id
        )
    _check_labels(cfg, num_labels)
    if tokenizer is None:
        raise ConfigError(
            "attack.kind = 'backdoor' puts a trigger phrase in text: use a text dataset"
        )
    labels = np.full(len(train), cfg.target_label, dtype=np.int64)
    split = Split(with_trigger([str(t) for t in train.inputs], cfg.trigger), labels)
    max_length = int(encoded.lengths().max()) + TRIGGER_ROOM
    return encode(split, tokenizer, max_length=max_length)


def concat(a: Encoded, b: Encoded) -> Encoded:
    """``a`` then ``b`` as one pool (b's indices start at ``len(a)``)."""
    ids = None if a.ids is None or b.ids is None else a.ids + b.ids
    features = (
        None
        if a.features is None or b.features is None
        else np.concatenate([a.features, b.features])
    )
    labels = None if a.labels is None or b.labels is None else np.concatenate([a.labels, b.labels])
    return Encoded(ids, features, labels, a.pad_id)


def poisoned_indices(indices: np.ndarray, offset: int, cfg: AttackConfig, seed: int) -> np.ndarray:
    """A malicious client's training indices: all poisoned (label flip) or a seeded
    ``poison_fraction`` of them swapped for their poisoned copies (backdoor)."""
    if cfg.kind == "label_flip":
        return indices + offset
    rng = np.random.default_rng([seed, 8])
    chosen = rng.random(len(indices)) < cfg.poison_fraction
    return np.where(chosen, indices + offset, indices)


def backdoor_test_set(
    test: Split,
    tokenizer,  # noqa: ANN001
    cfg: AttackConfig,
    *,
    max_length: int,
) -> Encoded:
    """Test examples whose true label is not the target, with the trigger, labelled with the
    target: accuracy on it is the attack success rate."""
    assert test.labels is not None  # checked by poisoned_pool
    keep = np.flatnonzero(test.labels != cfg.target_label)
    texts = with_trigger([str(test.inputs[i]) for i in keep], cfg.trigger)
    split = Split(texts, np.full(len(keep), cfg.target_label, dtype=np.int64))
    return encode(split, tokenizer, max_length=max_length + TRIGGER_ROOM)
