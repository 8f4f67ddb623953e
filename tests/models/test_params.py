import pytest
import torch

from fedfm.errors import BackboneMismatchError, ParamsMismatchError
from fedfm.models.params import (
    backbone_hash,
    deserialize,
    full_model_bytes,
    get_params,
    load_params_file,
    payload_bytes,
    save_params_file,
    serialize,
    set_params,
)


def _model(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    m[0].requires_grad_(False)  # frozen "backbone"
    return m


def test_params_are_the_trainable_tensors_only():
    params = get_params(_model())
    assert set(params) == {"1.weight", "1.bias"}


def test_set_params_round_trip_and_copy_semantics():
    m = _model()
    params = {k: torch.full_like(v, 0.5) for k, v in get_params(m).items()}
    set_params(m, params)
    assert torch.equal(m[1].weight, torch.full((2, 8), 0.5))
    params["1.bias"].fill_(9.0)  # later changes to the dict do not leak into the model
    assert not torch.equal(m[1].bias, params["1.bias"])


def test_set_params_refuses_mismatch():
    m = _model()
    with pytest.raises(ParamsMismatchError, match="missing"):
        set_params(m, {"1.weight": torch.zeros(2, 8)})
    with pytest.raises(ParamsMismatchError, match="shape"):
        set_params(m, {"1.weight": torch.zeros(2, 9), "1.bias": torch.zeros(2)})


def test_bytes_are_exact_serialised_size():
    params = get_params(_model())
    data = serialize(params)
    assert payload_bytes(params) == len(data)
    assert len(data) > (8 * 2 + 2) * 4  # tensor bytes plus the header
    restored = deserialize(data)
    assert all(torch.equal(restored[k], params[k]) for k in params)
    full = full_model_bytes(_model())
    assert full > payload_bytes(params) and full >= (4 * 8 + 8 + 8 * 2 + 2) * 4


def test_backbone_hash_ignores_trainable_and_sees_frozen():
    a, b = _model(0), _model(0)
    assert backbone_hash(a) == backbone_hash(b)
    with torch.no_grad():
        b[1].weight.add_(1.0)  # trainable: same backbone
    assert backbone_hash(a) == backbone_hash(b)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-3  # frozen: different backbone
    assert backbone_hash(a) != backbone_hash(b)


def test_params_file_checks_backbone(tmp_path):
    m = _model(0)
    path = save_params_file(
        tmp_path / "adapter.safetensors", get_params(m), backbone=backbone_hash(m)
    )
    other = _model(1)
    with pytest.raises(BackboneMismatchError, match="backbone"):
        load_params_file(other, path)
    fresh = _model(0)
    with torch.no_grad():
        fresh[1].weight.zero_()
    load_params_file(fresh, path)
    assert torch.equal(fresh[1].weight, m[1].weight)


def test_payload_bytes_memo_is_exact_for_new_shapes_and_names():
    for n in (1, 7, 300):
        for name in ("a", "a_much_longer_tensor_name"):
            params = {name: torch.zeros(n), "b": torch.zeros(2, n, dtype=torch.float16)}
            assert payload_bytes(params) == len(serialize(params))
            assert payload_bytes(params) == len(serialize(params))  # from the memo
