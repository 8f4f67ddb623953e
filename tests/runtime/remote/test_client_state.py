"""A remote client's own states: by round, on disk, and what a restart finds."""

import pytest
import torch

from fedfm.client.state import ClientState
from fedfm.errors import FedFMError
from fedfm.runtime.remote.client_state import ClientStateStore, state_folder


def _state(value: float, *, personal: bool = True) -> ClientState:
    return ClientState(
        strategy={"c": torch.full((2,), value)},
        personal={"head": torch.full((1,), 10 * value)} if personal else {},
        pipeline={"compress/residual.w": torch.full((3,), -value)},
    )


def test_a_restarted_client_finds_the_states_it_held_before_each_round(tmp_path):
    store = ClientStateStore(tmp_path, keep=2)
    for round_, value in ((1, 1.0), (3, 3.0), (6, 6.0)):
        store.save(round_, _state(value, personal=round_ != 6))
    restarted = ClientStateStore(tmp_path, keep=2)  # a new process: the disk only
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round-000003.safetensors",
        "round-000006.safetensors",
    ]
    before_6 = restarted.before(6)  # a server resumed at round 6 redoes it from round 3's
    assert torch.equal(before_6.strategy["c"], torch.full((2,), 3.0))
    assert torch.equal(before_6.personal["head"], torch.full((1,), 30.0))
    assert torch.equal(before_6.pipeline["compress/residual.w"], torch.full((3,), -3.0))
    later = restarted.before(9)
    assert torch.equal(later.strategy["c"], torch.full((2,), 6.0))
    assert not later.personal  # not held after round 6
    empty = restarted.before(3)  # round 1's file is gone: keep=2
    assert not empty


def test_a_client_without_states_writes_nothing(tmp_path):
    store = ClientStateStore(tmp_path / "states")
    store.save(1, ClientState())
    assert not (tmp_path / "states").exists()


def test_a_run_id_that_is_not_hex_is_refused_as_a_folder_name(tmp_path):
    assert state_folder(tmp_path, "c0", "98918d63899c915a") == tmp_path / "c0" / "98918d63899c915a"
    assert state_folder(None, "c0", "98918d63899c915a") is None
    assert state_folder(tmp_path, "c0", "") is None
    for run in ("../../etc", "/abs", "ab/cd", "ABC"):
        with pytest.raises(FedFMError, match="a run id is hex digits"):
            state_folder(tmp_path, "c0", run)
