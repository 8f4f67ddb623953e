"""``client.prefix_cache``: the frozen prefix runs once per example, and a round trains to the
same params (float tolerance) as without the cache, under the stated condition: no dropout
acts below the cut (the cached prefix runs in eval mode; dropout above the cut stays on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import deeper_bert

from fedfm.config import load_config
from fedfm.data.batching import batch_order, batches
from fedfm.errors import ConfigError
from fedfm.features import prefix_cache as feature_module
from fedfm.models.prefix import layer_stack
from fedfm.runtime.job import build_job
from fedfm.runtime.simulation import RoundState, evaluate_global, run_round

SMALL = [
    "data.max_train_examples=96",
    "data.max_test_examples=24",
    "data.num_clients=3",
    "data.min_client_size=8",
    "data.max_length=24",
    "strategy.fraction=1.0",
    "client.batch_size=8",
    "client.lr=0.01",
    "checkpoint.every=0",
]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bert3(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with 3 layers (the shared one has 2): room for a cut at layer 1 under
    clients that train their top 1 or top 2 layers."""
    return deeper_bert(tiny_model_dirs["bert"], tmp_path_factory.mktemp("bert3"), 3)


def _lines(tmp_path: Path) -> str:
    rows = tmp_path / "lines.jsonl"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near"] * 2
    rows.write_text(
        "".join(json.dumps({"text": " ".join(words[: 3 + i % 15])}) + "\n" for i in range(60))
    )
    return json.dumps(str(rows))


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _questions(tmp_path: Path) -> list[str]:
    rows = tmp_path / "qa.jsonl"
    capitals = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
    rows.write_text(
        "".join(
            json.dumps({"prompt": f"The capital of {c}? ({i})", "response": f"It is {a}."}) + "\n"
            for i in range(48)
            for c, a in [capitals[i % 4]]
        )
    )
    return [
        f"data.dataset={json.dumps(str(rows))}",
        "data.partition=iid",
        f"model.chat_template={json.dumps(CHATML)}",
    ]


def _overrides(tmp_path: Path, folder: Path, task: str, *extra: str) -> list[str]:
    if task == "classification":
        data = ["data.dataset=trec6"]
    elif task == "instruction":
        data = _questions(tmp_path)
    else:
        data = [f"data.dataset={_lines(tmp_path)}", "data.task=causal_lm", "data.partition=iid"]
    return [f"model.name={json.dumps(str(folder))}", *data, *SMALL, *extra]


def _prefix_dropout_off(job, split: int) -> None:  # noqa: ANN001
    """The uncached reference of the exactness condition: dropout off below the cut (the
    embeddings and layers ``0..split-1``), on above it. ``p = 0`` draws no random numbers,
    so dropout above the cut draws the same masks in both arms."""
    for module in layer_stack(job.model, generative=job.causal_lm).prefix_modules(split):
        for sub in module.modules():
            if isinstance(sub, torch.nn.Dropout):
                sub.p = 0.0


def _two_rounds(overrides: list[str], *, prefix_dropout: bool = False):  # noqa: ANN202
    """(params, records, job) after two rounds, uncached and cached."""
    out = {}
    for on in (False, True):
        job = build_job(load_config(None, [*overrides, f"client.prefix_cache={str(on).lower()}"]))
        out[on] = job
    split = out[True].feature("prefix_cache").cache.split
    if not prefix_dropout:
        _prefix_dropout_off(out[False], split)
    results = {}
    for on, job in out.items():
        state = RoundState(round=0, global_params=job.initial_params)
        records = [run_round(job, state) for _ in range(2)]
        results[on] = (state.global_params, records, job)
    return results


CASES = {  # name: (model kind, task, overrides, the expected cut)
    "bert-head": ("bert", "classification", ["adapter.method=head"], 2),
    "bert-lora-top1": ("bert", "classification", ["system.layers=[1]"], 1),
    "bert3-lora-top1-and-top2": ("bert3", "classification", ["system.layers=[1, 2]"], 1),
    "bert3-ia3-top2": ("bert3", "classification", ["adapter.method=ia3", "system.layers=[2]"], 1),
    "roberta-head": ("roberta", "classification", ["adapter.method=head"], 2),
    "llama-lora-top1": ("llama", "causal_lm", ["system.layers=[1]"], 1),
    "llama-lora-top1-checkpointing": (
        "llama",
        "causal_lm",
        ["system.layers=[1]", "client.gradient_checkpointing=true"],
        1,
    ),
    "qwen2-instruction-top1": ("qwen2", "instruction", ["system.layers=[1]"], 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_cached_round_trains_the_same_params_as_an_uncached_one(
    case: str, tiny_model_dirs: dict[str, Path], bert3: Path, tmp_path: Path
) -> None:
    kind, task, extra, split = CASES[case]
    folder = bert3 if kind == "bert3" else tiny_model_dirs[kind]
    results = _two_rounds(_overrides(tmp_path, folder, task, *extra))
    (plain, plain_records, _), (cached, cached_records, job) = results[False], results[True]
    cache = job.feature("prefix_cache").cache
    assert cache.split == split
    trained = np.unique(np.concatenate([c.train for c in job.federation.clients]))
    assert cache.computed == len(trained) + len(job.test)  # once each, over two rounds
    moved = max((cached[k] - job.initial_params[k]).abs().max().item() for k in cached)
    assert moved > 1e-4  # the round trained something
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-5, atol=1e-6)
    for a, b in zip(plain_records, cached_records, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)


def test_with_dropout_below_the_cut_the_uncached_run_is_another_draw(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The condition is real: the tiny BERT's hidden dropout (0.1) below the cut makes the
    uncached run differ; the cached one is the run with that dropout off."""
    overrides = _overrides(tmp_path, tiny_model_dirs["bert"], "classification", "system.layers=[1]")
    results = _two_rounds(overrides, prefix_dropout=True)
    plain, cached = results[False][0], results[True][0]
    assert max((plain[k] - cached[k]).abs().max().item() for k in plain) > 1e-5


def test_dp_sgd_trains_through_the_cache_as_without_it(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    extra = ["adapter.method=head", "dpsgd.enabled=true", "dpsgd.noise_multiplier=0.5"]
    results = _two_rounds(_overrides(tmp_path, tiny_model_dirs["bert"], "classification", *extra))
    plain, cached = results[False][0], results[True][0]
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-5, atol=1e-6)


def test_cached_batches_are_the_plain_batches_in_the_same_order(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    overrides = _overrides(tmp_path, tiny_model_dirs["bert"], "classification")
    job = build_job(
        load_config(None, [*overrides, "adapter.method=head", "client.prefix_cache=true"])
    )
    cache, idx = job.feature("prefix_cache").cache, job.federation[0].train
    kw = {"batch_size": 8, "causal_lm": False, "seed": 3, "bucket_by_length": True}
    order = batch_order(job.train, idx, **{k: v for k, v in kw.items() if k != "causal_lm"})
    for ids, plain, cached in zip(
        order, batches(job.train, idx, **kw), cache.batches(job.train, idx, **kw), strict=True
    ):
        assert torch.equal(plain["attention_mask"], cached["attention_mask"])
        assert torch.equal(plain["labels"], torch.from_numpy(job.train.labels[ids]))
        assert torch.equal(plain["labels"], cached["labels"])
        assert cached["inputs_embeds"].shape == (*plain["input_ids"].shape, 16)


def test_a_frozen_prefix_tensor_written_in_place_refills_the_cache(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    overrides = _overrides(tmp_path, tiny_model_dirs["bert"], "classification")
    jobs = [
        build_job(
            load_config(None, [*overrides, "adapter.method=head", f"client.prefix_cache={on}"])
        )
        for on in ("false", "true")
    ]
    for job in jobs:
        evaluate_global(job, job.initial_params)
        with torch.no_grad():
            job.model.bert.embeddings.word_embeddings.weight.mul_(1.5)
    plain, cached = (evaluate_global(job, job.initial_params) for job in jobs)
    cache = jobs[1].feature("prefix_cache").cache
    assert cache.refills == 1 and cache.computed == 2 * len(jobs[1].test)
    assert cached["loss"] == pytest.approx(plain["loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("kind", "task", "extra", "match"),
    [
        ("bert", "classification", ["adapter.method=lora"], "trains in layer 0"),
        ("llama", "classification", ["adapter.method=head"], "pools the last non-pad token"),
        ("gpt2", "causal_lm", ["system.layers=[1]"], "not one of the architectures"),
    ],
)
def test_what_the_cache_cannot_do_is_refused_when_the_job_is_built(
    kind: str, task: str, extra: list[str], match: str, tiny_model_dirs, tmp_path: Path
) -> None:
    overrides = _overrides(tmp_path, tiny_model_dirs[kind], task, *extra)
    with pytest.raises(ConfigError, match=match):
        build_job(load_config(None, [*overrides, "client.prefix_cache=true"]))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["adapter.method=full"], "the embeddings train"),
        (["adapter.method=bitfit"], "the embeddings train"),
        (["data.task=preference"], "pair of sequences"),
        (["client.prefix_cache_mb=0"], "must be >= 1"),
    ],
)
def test_what_the_cache_cannot_do_is_refused_with_the_config(extra: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*extra, "client.prefix_cache=true"])


def test_states_beyond_the_bound_are_refused_before_the_first_round(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feature_module, "MiB", 1024)  # client.prefix_cache_mb counts KiB
    overrides = _overrides(tmp_path, tiny_model_dirs["bert"], "classification")
    cfg = load_config(
        None,
        [*overrides, "adapter.method=head", "client.prefix_cache=true", "client.prefix_cache_mb=2"],
    )
    with pytest.raises(ConfigError, match=r"raise client.prefix_cache_mb to at least \d+"):
        build_job(cfg)


def test_the_bound_holds_for_a_split_the_job_did_not_size(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A client's own data (``fedfm join``) was not in the job's estimate: the cache refuses
    the example that would pass the bound, naming the key."""
    overrides = _overrides(tmp_path, tiny_model_dirs["bert"], "classification")
    job = build_job(
        load_config(None, [*overrides, "adapter.method=head", "client.prefix_cache=true"])
    )
    cache = job.feature("prefix_cache").cache
    cache.max_bytes = cache.nbytes + 1
    with pytest.raises(ConfigError, match="client.prefix_cache_mb"):
        cache.batches(job.train, np.arange(4), batch_size=2, causal_lm=False)
