"""The real generator (SmolLM2-135M-Instruct) end to end, on a tiny set."""

import json

import pytest

import fedfm.synthetic.build as build
from fedfm.config import load_config
from fedfm.errors import ConfigError, FedFMError
from fedfm.resources.models import load_model
from fedfm.synthetic.dataset import meta_path, read_set
from fedfm.synthetic.generate import Sampling, generate, plan_requests
from fedfm.synthetic.prompts import label_spec

TINY = [
    "synthetic.mode=server_warmup",
    "synthetic.size=12",
    "synthetic.batch_size=6",
    "synthetic.max_new_tokens=16",
    "synthetic.min_confidence=0",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture
def synthetic_dir(cache, monkeypatch):
    monkeypatch.setattr(build, "synthetic_dir", lambda: cache)
    return cache


@pytest.fixture
def no_generation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generated although a cached set matches")

    monkeypatch.setattr(build, "generate", refuse)


def test_a_set_records_how_every_row_was_made_and_what_the_filters_did(synthetic_dir):
    cfg = load_config(None, TINY)
    made = build.synthesize(cfg)
    meta = made.meta
    assert meta["generated"] == 12
    assert meta["kept"] == len(made) == meta["generated"] - sum(meta["removed"].values())
    assert set(meta["removed"]) == set(build.FILTERS)
    assert 0 <= meta["label_agreement"] <= 1 and meta["samples_per_second"] > 0
    assert meta["contamination"]["test_examples"] == 1077
    assert meta["contamination"]["checked"] >= len(made)
    for row in made.rows:
        assert row["format"] == "fedfm-synthetic/1" and row["text"]
        assert row["generator"].startswith("smollm2-135m")
        assert "{topic}" in row["template"] and row["seed"] == 0
        assert row["sampling"] == {
            "temperature": 1.0,
            "top_p": 0.95,
            "max_new_tokens": 16,
            "batch_size": 6,
        }
        assert row["label_name"] == meta["label_names"][row["label"]]
    assert read_set(made.path).rows == made.rows


def test_the_same_config_reuses_the_set_and_a_new_filter_reuses_the_generations(
    synthetic_dir, no_generation
):
    first = build.synthesize(load_config(None, TINY))
    assert build.synthesize(load_config(None, TINY)).path == first.path
    stricter = build.synthesize(load_config(None, [*TINY, "synthetic.min_words=6"]))
    assert stricter.path != first.path and stricter.meta["raw_key"] == first.meta["raw_key"]
    assert all(len(t.split()) >= 6 for t in stricter.texts)


def test_a_fully_filtered_set_is_an_error_and_leaves_no_file(synthetic_dir, no_generation):
    before = set(synthetic_dir.iterdir())
    cfg = load_config(None, [*TINY, "synthetic.min_words=55", "synthetic.max_words=60"])
    with pytest.raises(ConfigError, match="the filters removed all 12 generated samples"):
        build.synthesize(cfg)
    assert set(synthetic_dir.iterdir()) == before


def test_sampling_is_seeded():
    lm = load_model("smollm2-135m", task="causal_lm")
    spec = label_spec("trec6", ("abbreviation", "description"))
    requests = plan_requests(spec, 3, seed=0)
    sampling = Sampling(max_new_tokens=8, batch_size=3)
    a = generate(lm, spec, requests, sampling, seed=5)
    assert a == generate(lm, spec, requests, sampling, seed=5)
    assert a != generate(lm, spec, requests, sampling, seed=6)


def test_a_generator_that_cannot_load_is_a_clear_error(synthetic_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("unexpected end of file")

    monkeypatch.setattr(build, "load_model", broken)
    with pytest.raises(FedFMError, match="generator 'smollm2-135m' could not load"):
        build.synthesize(load_config(None, TINY), regenerate=True)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["data.dataset=digits", "model.name=mlp"], "is not text classification"),
        (["synthetic.seed_file=missing.jsonl"], "synthetic.seed_file = 'missing.jsonl' does not"),
        (["synthetic.descriptions=['only one']"], "synthetic.descriptions has 1 entries"),
    ],
)
def test_bad_input_is_refused_before_generating(synthetic_dir, no_generation, extra, match):
    with pytest.raises(ConfigError, match=match):
        build.synthesize(load_config(None, [*TINY, *extra]))


def test_a_seed_file_with_an_unknown_label_names_the_line(synthetic_dir, tmp_path, no_generation):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        json.dumps({"text": "Who?", "label": "human"})
        + "\n"
        + json.dumps({"text": "x", "label": "cat"})
    )
    cfg = load_config(None, [*TINY, f"synthetic.seed_file={seeds}"])
    with pytest.raises(ConfigError, match=r"line 2: label 'cat' is not one of"):
        build.synthesize(cfg)


def test_a_set_without_its_sidecar_is_never_read(synthetic_dir, tmp_path):
    made = build.synthesize(load_config(None, TINY))
    copy = tmp_path / "copy.jsonl"
    copy.write_text(made.path.read_text())
    with pytest.raises(ConfigError, match="copy.jsonl.meta.json does not exist"):
        read_set(copy)
    meta_path(copy).write_text(meta_path(made.path).read_text())
    assert read_set(copy).rows == made.rows
    with pytest.raises(ConfigError, match="written for the labels"):
        read_set(copy, label_names=("negative", "positive"))


def test_the_command_line_reports_the_filters_and_writes_the_set(
    synthetic_dir, no_generation, tmp_path, capsys
):
    from fedfm.cli import main

    out = tmp_path / "mine.jsonl"
    assert main(["synth", *(x for kv in TINY for x in ("--set", kv)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "label agreement" in printed and "contamination:" in printed
    assert "near_duplicate" in printed and "samples/s" in printed
    written = read_set(out)
    assert written.rows == build.synthesize(load_config(None, TINY)).rows
    assert main(["synth", "--set", f"synthetic.path={out}"]) == 0
