import numpy as np
import pytest

from fedfm.data.federation import ClientData, Federation
from fedfm.errors import ConfigError
from fedfm.synthetic.mix import with_synthetic

SIZES = (4, 10, 6)
FED = Federation(
    tuple(
        ClientData(i, f"c{i}", np.arange(10 * i, 10 * i + n), np.array([99]))
        for i, n in enumerate(SIZES)
    )
)
SYN = np.arange(100, 130)


@pytest.mark.parametrize("mode", ["none", "server_warmup"])
def test_modes_that_do_not_touch_clients(mode):
    assert with_synthetic(FED, SYN, mode=mode, ratio=1.0, seed=0) is FED


def test_client_mix_adds_ratio_times_each_clients_data_from_the_synthetic_set():
    mixed = with_synthetic(FED, SYN, mode="client_mix", ratio=1.5, seed=0)
    for before, after in zip(FED.clients, mixed.clients, strict=True):
        real, extra = after.train[: before.num_examples], after.train[before.num_examples :]
        np.testing.assert_array_equal(real, before.train)
        assert len(extra) == round(1.5 * before.num_examples)
        assert set(extra) <= set(SYN) and len(set(extra)) == len(extra)  # no repeats
        np.testing.assert_array_equal(after.eval, before.eval)  # eval stays real
    again = with_synthetic(FED, SYN, mode="client_mix", ratio=1.5, seed=0)
    assert all(np.array_equal(a.train, b.train) for a, b in zip(mixed, again, strict=True))
    other = with_synthetic(FED, SYN, mode="client_mix", ratio=1.5, seed=1)
    assert any(not np.array_equal(a.train, b.train) for a, b in zip(mixed, other, strict=True))


def test_client_mix_samples_with_replacement_when_the_set_is_smaller():
    mixed = with_synthetic(FED, SYN[:5], mode="client_mix", ratio=1.0, seed=0)
    assert len(mixed[1].train) == 20 and set(mixed[1].train[10:]) <= set(SYN[:5])


def test_synthetic_only_splits_the_set_across_clients_in_place_of_real_data():
    only = with_synthetic(FED, SYN, mode="synthetic_only", ratio=1.0, seed=0)
    parts = [c.train for c in only.clients]
    assert sorted(np.concatenate(parts).tolist()) == SYN.tolist()
    assert [len(p) for p in parts] == [10, 10, 10]
    with pytest.raises(ConfigError, match="share of 2 synthetic examples"):
        with_synthetic(FED, SYN[:2], mode="synthetic_only", ratio=1.0, seed=0)
