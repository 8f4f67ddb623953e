"""Attack simulation: who attacks, what the poisoned data and deltas look like."""

import numpy as np
import pytest
import torch

from fedfm.attacks import (
    concat,
    malicious_clients,
    poison_delta,
    poisoned_indices,
    poisoned_pool,
    with_trigger,
)
from fedfm.config import AttackConfig
from fedfm.data.batching import Encoded
from fedfm.resources.types import Split


def test_malicious_set_is_seeded_and_sized():
    a = malicious_clients(20, 0.3, seed=1)
    assert a == malicious_clients(20, 0.3, seed=1) and len(a) == 6
    assert a != malicious_clients(20, 0.3, seed=2)
    assert malicious_clients(20, 0.0, seed=1) == frozenset()
    assert len(malicious_clients(5, 0.01, seed=1)) == 1  # a non-zero share is someone


def test_model_attacks_rewrite_the_delta():
    delta = {"w": torch.tensor([1.0, -2.0])}
    flip = poison_delta(delta, AttackConfig(kind="sign_flip", scale=3.0), torch.Generator())
    torch.testing.assert_close(flip["w"], torch.tensor([-3.0, 6.0]))
    scaled = poison_delta(delta, AttackConfig(kind="scale", scale=10.0), torch.Generator())
    torch.testing.assert_close(scaled["w"], torch.tensor([10.0, -20.0]))
    noise = poison_delta(
        {"w": torch.zeros(10_000)},
        AttackConfig(kind="noise", noise_std=0.5),
        torch.Generator().manual_seed(0),
    )
    assert float(noise["w"].std()) == pytest.approx(0.5, rel=0.05)


def test_label_flip_pool_maps_every_label_to_its_mirror():
    enc = Encoded(ids=[np.array([1, 2]), np.array([3])], features=None, labels=np.array([0, 5]))
    cfg = AttackConfig(kind="label_flip", fraction=0.1)
    pool = poisoned_pool(Split(["a", "b"], enc.labels), enc, None, cfg, num_labels=6)
    assert pool.labels.tolist() == [5, 0] and pool.ids is enc.ids
    both = concat(enc, pool)
    assert len(both) == 4 and both.labels.tolist() == [0, 5, 5, 0]
    idx = np.array([0, 1])
    assert poisoned_indices(idx, 2, cfg, seed=0).tolist() == [2, 3]


def test_backdoor_poisons_a_seeded_share_of_a_clients_examples():
    cfg = AttackConfig(kind="backdoor", fraction=0.1, poison_fraction=0.5)
    idx = np.arange(1000)
    out = poisoned_indices(idx, 5000, cfg, seed=3)
    poisoned = out >= 5000
    assert 0.4 < poisoned.mean() < 0.6
    assert np.array_equal(out[poisoned] - 5000, idx[poisoned])  # same example, triggered copy
    assert np.array_equal(out, poisoned_indices(idx, 5000, cfg, seed=3))
    assert with_trigger(["what is it ?"], "cf") == ["cf what is it ?"]
