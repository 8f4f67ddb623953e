"""Offsite tuning (``[offsite]``): the emulator's layer map, its forward (the model with the
dropped layers removed), plug-in (the adapters written into the full model, nothing else
touched), a run that records plug-in and emulator metrics, distillation and the refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers
from rich.console import Console
from tiny_models import deeper_bert

from fedfm.config import AdapterConfig, load_config
from fedfm.errors import ConfigError
from fedfm.models.adapters import apply_adapter
from fedfm.models.emulator import (
    Emulator,
    emulator_name,
    full_name,
    layer_map,
    plug_in,
    transformer_layers,
)
from fedfm.models.layers import layer_index
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.runtime.simulation import RoundState, run_round

# ------------------------------------------------------------------ the layer map

DOCUMENTED = [  # (L, bottom, top, keep) -> (kept, dropped): docs/offsite.md's examples
    ((12, 2, 2, 0.5), ((2, 4, 6, 8), (3, 5, 7, 9))),
    ((6, 1, 1, 0.5), ((1, 3), (2, 4))),  # MiniLM with the defaults
    ((6, 1, 1, 1.0), ((1, 2, 3, 4), ())),  # keep = 1: the full model
    ((6, 1, 1, 0.0), ((), (1, 2, 3, 4))),  # keep = 0: no middle layer at all
    ((6, 1, 1, 0.3), ((1,), (2, 3, 4))),  # 1.2 of 4 rounds to 1 layer
    ((12, 2, 2, 0.25), ((2, 6), (3, 4, 5, 7, 8, 9))),  # stride 4
    ((4, 0, 1, 0.5), ((0, 1), (2,))),  # 1.5 of 3 rounds half up to 2; stride 1.5
    ((3, 1, 1, 0.5), ((1,), ())),  # one middle layer, half of it rounds up
]


@pytest.mark.parametrize(("args", "expected"), DOCUMENTED)
def test_layer_map_is_the_documented_rule(args: tuple, expected: tuple) -> None:
    num_layers, bottom, top, keep = args
    m = layer_map(num_layers, bottom=bottom, top=top, keep=keep)
    assert (m.kept, m.dropped) == expected
    assert m.bottom == tuple(range(bottom))
    assert m.top == tuple(range(num_layers - top, num_layers))
    assert m.emulator == m.bottom + m.kept + m.top


def test_layer_map_partitions_the_middle_for_every_setting() -> None:
    for num_layers in range(2, 14):
        for bottom in range(num_layers):
            for top in range(num_layers - bottom):
                for keep in (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.6, 0.75, 0.9, 1.0):
                    m = layer_map(num_layers, bottom=bottom, top=top, keep=keep)
                    size = num_layers - bottom - top
                    assert sorted(m.kept + m.dropped) == list(m.middle)
                    assert len(m.middle) == size
                    assert len(m.kept) == int(keep * size + 0.5)
                    assert list(m.kept) == sorted(set(m.kept))
                    if m.kept:  # the first middle layer is always kept
                        assert m.kept[0] == bottom


@pytest.mark.parametrize(
    ("num_layers", "bottom", "top", "keep"),
    [(6, 3, 3, 0.5), (6, 4, 3, 0.5), (6, -1, 1, 0.5), (6, 1, 1, 1.5), (6, 1, 1, -0.1)],
)
def test_layer_map_refuses_what_leaves_no_middle_or_is_out_of_range(
    num_layers: int, bottom: int, top: int, keep: float
) -> None:
    with pytest.raises(ValueError):
        layer_map(num_layers, bottom=bottom, top=top, keep=keep)


def test_emulator_names_and_full_names_are_inverse() -> None:
    m = layer_map(6, bottom=1, top=1, keep=0.5)  # emulator layers 0, 1, 3, 5
    name = "base_model.model.bert.encoder.layer.{}.attention.self.query.lora_A.default.weight"
    assert full_name(name.format(3), m) == name.format(5)
    assert emulator_name(name.format(5), m) == name.format(3)
    for i in m.emulator:
        assert full_name(emulator_name(name.format(i), m), m) == name.format(i)
    with pytest.raises(KeyError, match="drops"):
        emulator_name(name.format(2), m)
    with pytest.raises(KeyError, match="4 layers"):
        full_name(name.format(4), m)


# ------------------------------------------------------------------ the emulator's forward


def _tiny(kind: str, layers: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32, num_labels=3,
        )  # fmt: skip
        return transformers.BertForSequenceClassification(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _without(model: torch.nn.Module, kept: tuple[int, ...]) -> torch.nn.Module:
    """A deep copy of ``model`` whose transformer layers are only ``kept`` (renumbered)."""
    compact = copy.deepcopy(model)
    inner = compact.bert.encoder if hasattr(compact, "bert") else compact.model
    name = "layer" if hasattr(compact, "bert") else "layers"
    old = getattr(inner, name)
    setattr(inner, name, torch.nn.ModuleList([old[i] for i in kept]))
    return compact


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 64, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize(("bottom", "top", "keep"), [(1, 1, 0.5), (2, 1, 0.34), (0, 2, 0.0)])
def test_the_emulator_is_the_model_with_the_dropped_layers_removed(
    kind: str, bottom: int, top: int, keep: float
) -> None:
    model = _tiny(kind)
    m = layer_map(6, bottom=bottom, top=top, keep=keep)
    emulator = Emulator(transformer_layers(model), m)
    batch = _batch()
    compact = _without(model, m.emulator)
    with torch.no_grad():
        full = _outputs(model, batch)
        with emulator.view():
            emulated = _outputs(model, batch)
        after = _outputs(model, batch)  # the view is gone again
        reference = _outputs(compact, batch)
    for a, b in zip(emulated, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (emulated[0] - full[0]).abs().max() > 1e-2  # dropping layers changed the states
    assert all(torch.equal(a, b) for a, b in zip(after, full, strict=True))


def _outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The last layer's hidden states (the tiny random head shrinks differences) and logits."""
    inner = model.bert if hasattr(model, "bert") else model.model
    return [inner(**batch).last_hidden_state, model(**batch).logits]


@pytest.mark.parametrize("keep", [0.5, 1.0])  # 1.0: nothing dropped, a replacement only
def test_a_nested_view_leaves_the_outer_one_in_place(keep: float) -> None:
    model = _tiny("bert")
    layers = transformer_layers(model)
    other = copy.deepcopy(layers[1])
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    emulator = Emulator(layers, layer_map(6, bottom=1, top=1, keep=keep), {1: other})
    batch = _batch()
    with torch.no_grad():
        full = _outputs(model, batch)[0]
        with emulator.view():
            outer = _outputs(model, batch)[0]
            with emulator.view():
                pass
            assert torch.equal(_outputs(model, batch)[0], outer)
        assert torch.equal(_outputs(model, batch)[0], full)
    assert not torch.allclose(outer, full)


# ------------------------------------------------------------------ plug-in


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    return apply_adapter(
        model, AdapterConfig(rank=2), architecture="bert", task="classification"
    ).eval()


def test_plug_in_writes_the_adapters_and_leaves_every_other_tensor_bitwise_unchanged() -> None:
    m = layer_map(6, bottom=1, top=1, keep=0.5)
    full = _lora(_tiny("bert"))
    compact = _without(full.get_base_model(), m.emulator)  # a standalone emulator
    adapter_layers = {m.emulator.index(i) for i in m.adapter}
    trained = {}
    for name, p in compact.named_parameters():  # "train" its adapter layers and head
        index = layer_index(name)
        if p.requires_grad and (index is None or index in adapter_layers):
            with torch.no_grad():
                p.add_(torch.randn_like(p))
            trained[name] = p.detach().clone()
    assert any(layer_index(n) == 3 for n in trained)  # the top layer, renumbered 5 -> 3
    before = {k: v.clone() for k, v in full.get_base_model().state_dict().items()}

    written = plug_in(full.get_base_model(), trained, m)

    assert set(written) == {full_name(n, m) for n in trained}
    after = full.get_base_model().state_dict()
    for name, value in after.items():
        if name in written:
            assert torch.equal(value, written[name])
            assert not torch.equal(value, before[name])
        else:
            assert torch.equal(value, before[name]), name  # bit for bit
    # the full model in its emulator view is now the standalone emulator
    batch = _batch()
    with torch.no_grad(), Emulator(transformer_layers(full), m).view():
        torch.testing.assert_close(full(**batch).logits, compact(**batch).logits)


def test_plug_in_refuses_a_middle_tensor_and_an_unknown_name() -> None:
    m = layer_map(6, bottom=1, top=1, keep=0.5)
    model = _lora(_tiny("bert")).get_base_model()
    middle = "bert.encoder.layer.1.attention.self.query.lora_A.default.weight"  # emulator 1 = 1
    with pytest.raises(ValueError, match="middle layer 1"):
        plug_in(model, {middle: torch.zeros(2, 16)}, m)
    with pytest.raises(KeyError, match="no tensor"):
        plug_in(model, {"bert.encoder.layer.0.nothing.weight": torch.zeros(1)}, m)


# ------------------------------------------------------------------ a federated run

SMALL = [
    "data.dataset=trec6",
    "data.max_train_examples=64",
    "data.max_test_examples=24",
    "data.num_clients=2",
    "data.min_client_size=8",
    "data.max_length=16",
    "strategy.fraction=1.0",
    "client.batch_size=8",
    "client.steps=2",
    "client.lr=0.02",
    "checkpoint.every=0",
    "offsite.enabled=true",
]


@pytest.fixture(scope="module")
def bert4(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with 4 layers: bottom 0 and top 3 adapt, middle 1 is kept, 2 dropped."""
    return deeper_bert(tiny_model_dirs["bert"], tmp_path_factory.mktemp("bert4"), 4)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _cfg(folder: Path, *extra: str):  # noqa: ANN202
    return load_config(None, [f"model.name={json.dumps(str(folder))}", *SMALL, *extra])


def test_clients_train_on_the_emulator_and_only_the_adapter_layers_travel(bert4: Path) -> None:
    job = build_job(_cfg(bert4, "eval.every=100"))
    lmap = job.feature("offsite").emulator.map
    assert (lmap.adapter, lmap.kept, lmap.dropped) == ((0, 3), (1,), (2,))
    layers = {layer_index(n) for n in job.initial_params} - {None}
    assert layers == {0, 3}  # the middle's LoRA tensors neither train nor travel
    middle = {
        n: p.detach().clone()
        for n, p in job.model.named_parameters()
        if "lora" in n and layer_index(n) in (1, 2)
    }
    assert middle and not any(
        p.requires_grad for n, p in job.model.named_parameters() if n in middle
    )

    calls = {1: 0, 2: 0}
    stack = transformer_layers(job.model)
    for i in calls:  # a sub-module runs only when its layer is not a pass-through
        stack[i].attention.register_forward_pre_hook(
            lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)
        )
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    assert "test_accuracy" not in record  # no evaluation this round: training alone counted
    assert calls[1] == 2 * 2 and calls[2] == 0  # 2 clients x 2 steps; the dropped layer never
    moved = [
        n
        for n in state.global_params
        if not torch.equal(state.global_params[n], job.initial_params[n])
    ]
    assert {layer_index(n) for n in moved} >= {0, 3}
    for name, value in job.model.named_parameters():
        if name in middle:
            assert torch.equal(value, middle[name])


def test_a_run_records_the_plug_in_and_the_emulator_metrics(bert4: Path, tmp_path: Path) -> None:
    cfg = _cfg(bert4, "rounds=2", f"output_dir={tmp_path}", "name=offsite")
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, console=Console(quiet=True), plot=False)
    records = read_records(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert 0.0 <= record["emulator_test_accuracy"] <= 1.0
        assert record["test_loss"] != record["emulator_test_loss"]  # two different models
    assert summary["offsite"]["kept"] == [1] and summary["offsite"]["dropped"] == [2]
    assert summary["offsite"]["adapter"] == [0, 3]


def test_distillation_lowers_its_loss_and_leaves_the_full_model_untouched(bert4: Path) -> None:
    plain = build_job(_cfg(bert4))
    job = build_job(
        _cfg(
            bert4,
            "offsite.distill_steps=8",
            "offsite.distill_lr=0.001",
            "offsite.distill_data=sms_spam",
            "offsite.distill_examples=64",
        )
    )
    d = job.feature("offsite").distilled
    assert d.steps == 8 and d.loss_after < 0.9 * d.loss_before
    for (name, a), (_, b) in zip(
        plain.model.state_dict().items(), job.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name  # the copies trained, not the model
    batch = {k: v[:4] for k, v in _batch().items()}
    with torch.no_grad():
        full = job.model(**batch).logits
        with job.feature("offsite").emulator.view():
            distilled = job.model(**batch).logits
        with plain.feature("offsite").emulator.view():
            undistilled = plain.model(**batch).logits
    assert torch.equal(full, plain.model(**batch).logits)
    assert not torch.allclose(distilled, undistilled)  # the view runs the distilled copy


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["adapter.method=full"], "adapter.method = 'full'"),
        (["adapter.method=bitfit"], "bias terms"),
        (["adapter.method=head"], "no adapter layers"),
        (["client.prefix_cache=true", "system.layers=[1]"], "client.prefix_cache = true"),
        (["simulation.parallel_clients=2"], "simulation.parallel_clients = 2"),
        (["system.layers=[1]"], "system.layers = [1]"),
        (["backend=ray"], "backend = 'ray'"),
        (["backend=remote"], "backend = 'remote'"),
        (["offsite.bottom=0", "offsite.top=0"], "no layer's adapter"),
        (["offsite.distill_steps=5"], "offsite.distill_data"),
        (["offsite.keep=1.5"], "offsite.keep = 1.5 must be in [0, 1]"),
        (["offsite.top=-1"], "offsite.top = -1 must be >= 0"),
    ],
)
def test_refused_settings_name_the_key_and_the_fix(extra: list[str], says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["offsite.enabled=true", *extra])
    assert any(says in p and "offsite" in p for p in err.value.problems)


def test_the_defaults_and_a_disabled_section_raise_nothing() -> None:
    load_config(None, ["offsite.enabled=true"])
    load_config(None, ["adapter.method=full", "offsite.distill_steps=3"])  # not enabled


@pytest.mark.parametrize(
    ("kind", "extra", "says"),
    [
        ("bert", ["offsite.bottom=1", "offsite.top=1"], "no middle layer"),  # 2 layers
        ("gpt2", ["data.dataset=sms_spam"], "not one of the architectures"),
        (
            None,
            ["model.name=mlp", "data.dataset=digits", "adapter.target_modules=['hidden']"],
            "not one of the architectures",
        ),
        ("bert4", ["offsite.keep=0", "offsite.distill_steps=2", "offsite.distill_data=sms_spam"],
         "nothing to distil"),
    ],
)  # fmt: skip
def test_what_needs_the_model_is_refused_when_the_job_is_built(
    kind: str | None, extra: list[str], says: str, tiny_model_dirs: dict[str, Path], bert4: Path
) -> None:
    folder = bert4 if kind == "bert4" else tiny_model_dirs.get(kind or "", bert4)
    overrides = [f"model.name={json.dumps(str(folder))}", *SMALL, *extra]
    with pytest.raises(ConfigError, match=says):
        build_job(load_config(None, overrides))
