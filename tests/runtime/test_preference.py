"""Federated DPO (``data.task = "preference"``): pairs encoded as two masked sequences, the
DPO loss with the adapter-off backbone as the reference, runs through every part of the
update chain, and an SFT run's adapter as the start of a DPO run (``model.init_adapter``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from fedfm.cli import main
from fedfm.config import RunConfig, load_config
from fedfm.data.batching import collate
from fedfm.dpo import dpo_loss, sequence_logps
from fedfm.errors import BackboneMismatchError, ConfigError, ParamsMismatchError
from fedfm.models.params import get_params, set_params
from fedfm.report.metrics import read_records
from fedfm.resources.types import PreferencePair, Split
from fedfm.runtime.checkpoint import config_fingerprint
from fedfm.runtime.job import build_job, encode_split
from fedfm.runtime.rescore import rescore_run
from fedfm.runtime.run import execute, prepare_run_dir

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
METRICS = ("test_loss", "test_preference_accuracy", "test_reward_margin")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _pairs(path: Path) -> Path:
    """48 prompts, each with the right capital chosen and another country's rejected."""
    with path.open("w") as f:
        for i in range(48):
            country, capital = CAPITALS[i % len(CAPITALS)]
            wrong = CAPITALS[(i + 1) % len(CAPITALS)][1]
            row = {
                "prompt": f"What is the capital of {country}? ({i})",
                "chosen": f"The capital is {capital}.",
                "rejected": f"The capital is {wrong}.",
            }
            f.write(json.dumps(row) + "\n")
    return path


def _sft(path: Path) -> Path:
    """The same prompts as instruction rows (the chosen response as the reference)."""
    with path.open("w") as f:
        for i in range(48):
            country, capital = CAPITALS[i % len(CAPITALS)]
            row = {"prompt": f"What is the capital of {country}? ({i})"}
            f.write(json.dumps({**row, "response": f"The capital is {capital}."}) + "\n")
    return path


def _overrides(tmp_path: Path, folder: Path, *extra: str) -> list[str]:
    return [
        f"data.dataset={json.dumps(str(_pairs(tmp_path / 'pref.jsonl')))}",
        "data.partition=iid",
        "data.num_clients=3",
        "data.max_length=48",
        f"model.name={json.dumps(str(folder))}",
        f"model.chat_template={json.dumps(CHATML)}",
        "client.lr=0.05",
        "client.batch_size=8",
        "strategy.clients_per_round=3",
        "rounds=2",
        "eval.initial=true",
        f"output_dir={json.dumps(str(tmp_path / 'runs'))}",
        "name=dpo",
        *extra,
    ]


def _cfg(tmp_path: Path, folder: Path, *extra: str) -> RunConfig:
    return load_config(None, _overrides(tmp_path, folder, *extra))


def test_a_batch_of_k_pairs_is_2k_rows_chosen_first_sharing_the_prompt(
    tmp_path: Path, tiny_model_dirs
) -> None:
    folder = tiny_model_dirs["qwen2"]
    cfg = _cfg(tmp_path, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    multi_turn = (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of Spain?"},
    )
    pairs = [
        PreferencePair(({"role": "user", "content": "Capital of Peru?"},), "Lima.", "Rome."),
        PreferencePair(multi_turn, "Madrid.", "It is Paris, surely."),
        PreferencePair(({"role": "user", "content": "2+2?"},), "4", "5"),
    ]
    encoded = encode_split(Split(pairs, None), tokenizer, task="preference", cfg=cfg)
    assert len(encoded) == 3  # pairs, not sequences
    assert encoded.labels is None
    batch = collate(encoded, [2, 0, 1], causal_lm=True)
    assert batch["input_ids"].shape[0] == 6
    order = [2, 0, 1]
    for j, i in enumerate(order):
        for row, response in ((j, pairs[i].chosen), (j + 3, pairs[i].rejected)):
            labels = batch["labels"][row]
            assert tokenizer.decode(labels[labels != -100]) == response + "<|im_end|>"
        chosen, rejected = batch["labels"][j], batch["labels"][j + 3]
        start = int((chosen != -100).nonzero()[0])  # the first response token
        assert start == int((rejected != -100).nonzero()[0])
        assert torch.equal(batch["input_ids"][j, :start], batch["input_ids"][j + 3, :start])
        assert (batch["attention_mask"][j, :start] == 1).all()
    # the multi-turn prompt's earlier assistant turn is prompt, not response
    assert "Hello" in tokenizer.decode(batch["input_ids"][2]) and "Hello" not in (
        tokenizer.decode(batch["labels"][2][batch["labels"][2] != -100])
    )
    # padding: labels -100 and attention 0 past each row's end
    assert ((batch["attention_mask"] == 0) <= (batch["labels"] == -100)).all()

    # a shared cut: the same prompt tokens dropped from both, counted once per pair
    short = encode_split(
        Split(pairs, None),
        tokenizer,
        task="preference",
        cfg=_cfg(tmp_path, folder, "data.max_length=14"),
    )
    assert short.truncated_prompts == 3
    cut = collate(short, [0, 1, 2], causal_lm=True)
    for j in range(3):
        a, b = short.ids[j], short.rejected[j]
        assert max(len(a), len(b)) <= 14
        n = int((cut["labels"][j] != -100).nonzero()[0])
        assert torch.equal(cut["input_ids"][j, :n], cut["input_ids"][j + 3, :n])
    # only the long rejected response of pair 1 did not fit: it alone loses its end
    assert short.truncated_responses == 1
    kept = [tokenizer.decode(cut["labels"][r][cut["labels"][r] != -100]) for r in (1, 4)]
    assert kept[0] == "Madrid.<|im_end|>"
    assert "It is Paris, surely.<|im_end|>".startswith(kept[1]) and len(kept[1]) < 20


def test_the_loss_is_dpo_of_the_adapter_against_the_backbone(
    tmp_path: Path, tiny_model_dirs
) -> None:
    job = build_job(_cfg(tmp_path, tiny_model_dirs["qwen2"], "client.dpo_beta=0.5"))
    batch = collate(job.train, [0, 1, 2, 3], causal_lm=True)
    # at init LoRA's B is 0: the policy is the reference, every reward 0, the loss log 2
    assert job.task.loss(job.model, batch).item() == pytest.approx(math.log(2), abs=1e-6)

    generator = torch.Generator().manual_seed(0)
    moved = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator)
        for k, v in get_params(job.model).items()
    }
    set_params(job.model, moved)
    loss = job.task.loss(job.model, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        policy = sequence_logps(job.model(**inputs).logits, batch["labels"])
        with job.model.disable_adapter():
            reference = sequence_logps(job.model(**inputs).logits, batch["labels"])
        base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dirs["qwen2"])
        untouched = sequence_logps(base(**inputs).logits, batch["labels"])
    torch.testing.assert_close(reference, untouched)  # the reference is the backbone itself
    expected = dpo_loss(policy[:4], policy[4:], reference[:4], reference[4:], beta=0.5)
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    assert loss.item() != pytest.approx(math.log(2))
    loss.backward()  # gradients reach the adapter only
    grads = {n: p.grad for n, p in job.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    # a client's task is the DPO task even with client.loss = "balanced" (the default)
    assert job.cfg.client.loss == "balanced"
    assert job.client_context().local_task(job.federation[0].train) is job.task


def test_two_federated_rounds_record_preference_accuracy_and_margin(
    tmp_path: Path, tiny_model_dirs
) -> None:
    cfg = _cfg(tmp_path, tiny_model_dirs["qwen2"], "client.steps=20", "client.dpo_beta=0.5")
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, plot=False)
    records = read_records(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[0]["test_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[0]["test_reward_margin"] == 0.0
    assert all(math.isfinite(r[key]) for r in records for key in METRICS)
    assert all(math.isfinite(r["train_loss"]) for r in records[1:])  # the DPO loss
    # the chosen capitals became likelier than the rejected ones, relative to the backbone
    assert records[2]["test_reward_margin"] > 0
    assert records[2]["test_loss"] < math.log(2)
    assert records[2]["test_preference_accuracy"] > 0.5
    assert summary["task"] == "preference"
    assert summary["best_test_preference_accuracy"] == max(
        r["test_preference_accuracy"] for r in records[1:]
    )
    assert summary["truncated_responses"] == {"train": 0, "test": 0}


@pytest.mark.parametrize(
    "stage",
    [
        ["privacy.noise=central", "privacy.noise_multiplier=0.5", "privacy.clip=1.0"],
        ["compression.method=quantize", "compression.bits=8"],
        ["secagg.enabled=true"],
    ],
    ids=["central-dp", "quantize", "secagg"],
)
def test_dpo_runs_through_the_update_chain(
    tmp_path: Path, tiny_model_dirs, stage: list[str]
) -> None:
    cfg = _cfg(tmp_path, tiny_model_dirs["qwen2"], "rounds=1", "eval.initial=false", *stage)
    execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False), plot=False)
    (record,) = read_records(tmp_path / "runs" / "dpo" / "metrics.jsonl")
    assert all(math.isfinite(record[key]) for key in METRICS)
    assert len(record["excluded"]) == 0


@pytest.mark.parametrize(
    "strategy",
    [
        "centralized",
        "fedadagrad",
        "fedadam",
        "fedavg",
        "fedavgm",
        "fedprox",
        "fedyogi",
        "flora",
        "local",
        "scaffold",
    ],
)
def test_dpo_trains_with_every_strategy(tmp_path: Path, tiny_model_dirs, strategy: str) -> None:
    from fedfm.strategies import STRATEGIES

    assert strategy in STRATEGIES.names()
    cfg = _cfg(tmp_path, tiny_model_dirs["qwen2"], "rounds=1", f"strategy.name={strategy}")
    execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False), plot=False)
    initial, record = read_records(tmp_path / "runs" / "dpo" / "metrics.jsonl")
    assert math.isfinite(record["train_loss"])
    if strategy == "local":  # no global model: each client's own, on its held-out pairs
        assert math.isfinite(record["client_preference_accuracy_mean"])
        assert record["update_norm_median"] > 0  # the clients' models moved
    else:
        assert all(math.isfinite(record[key]) for key in METRICS)
        assert record["test_loss"] != initial["test_loss"]  # the global model moved


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["adapter.method=full"], "adapter.method = 'full' has no adapter to switch off"),
        (["adapter.method=bitfit"], "set adapter.method = 'lora' or 'ia3'"),
        (["dpsgd.enabled=true", "dpsgd.noise_multiplier=1.0"], "a DPO example is a pair"),
    ],
)
def test_what_dpo_cannot_do_is_refused_at_set_up(
    tmp_path: Path, tiny_model_dirs, extra: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_job(_cfg(tmp_path, tiny_model_dirs["qwen2"], *extra))


def _cli(*overrides: str) -> int:
    args = ["run"]
    for item in overrides:
        args += ["--set", item]
    return main(args)


def test_cli_sft_then_dpo_from_the_sft_adapter(
    tmp_path: Path, tiny_model_dirs, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tiny_model_dirs["qwen2"]
    sft = [
        *_overrides(tmp_path, folder, "rounds=1", "eval.initial=false"),
        f"data.dataset={json.dumps(str(_sft(tmp_path / 'sft.jsonl')))}",
        "data.task=instruction",
        "name=sft",
    ]
    assert _cli(*sft) == 0
    sft_dir = tmp_path / "runs" / "sft"
    sft_params = load_file(sft_dir / "adapter.safetensors")

    dpo = _overrides(tmp_path, folder, "rounds=1", f"model.init_adapter={json.dumps(str(sft_dir))}")
    assert _cli(*dpo) == 0
    dpo_dir = tmp_path / "runs" / "dpo"
    start, end = read_records(dpo_dir / "metrics.jsonl")
    # round 0 is the SFT model: it already prefers something, unlike a fresh adapter (0)
    assert start["test_reward_margin"] != 0.0
    job = build_job(load_config(dpo_dir / "config.toml"))  # the DPO run's own config
    assert job.initial_params.keys() == sft_params.keys()
    assert all(torch.equal(job.initial_params[k], sft_params[k]) for k in sft_params)
    assert config_fingerprint(job.cfg)["model.init_adapter"] == str(sft_dir)  # kept on resume
    # `fedfm eval` scores the DPO run as its last round did (the same beta and reference)
    rescored = rescore_run(dpo_dir)["metrics"]
    assert rescored["reward_margin"] == pytest.approx(end["test_reward_margin"], rel=1e-5)
    assert rescored["preference_accuracy"] == end["test_preference_accuracy"]
    capsys.readouterr()

    # another backbone (the same architecture, other weights) is refused, naming the key
    other = shutil.copytree(folder, tmp_path / "other")
    from tiny_models import make_tiny_model

    make_tiny_model("qwen2", other, seed=1)
    assert _cli(*dpo, f"model.name={json.dumps(str(other))}", "name=wrong") == 2
    err = capsys.readouterr()
    assert "model.init_adapter" in err.out + err.err and "backbone" in err.out + err.err
    with pytest.raises(BackboneMismatchError, match="model.init_adapter"):
        build_job(load_config(None, [*dpo, f"model.name={json.dumps(str(other))}"]))
    # another adapter config is refused too
    with pytest.raises(ParamsMismatchError, match="model.init_adapter .* adapter"):
        build_job(load_config(None, [*dpo, "adapter.rank=4"]))
    # and a folder that is no finished run, before anything loads
    assert _cli(*dpo, f"model.init_adapter={json.dumps(str(tmp_path))}", "name=none") == 2
    assert "no config.toml" in "".join(capsys.readouterr())


def test_ray_gives_the_in_process_dpo_run(tmp_path: Path, tiny_model_dirs) -> None:
    ray = pytest.importorskip("ray")
    folder = tiny_model_dirs["qwen2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: float sums then match bit for bit
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = {}
        for name, extra in (("local", []), ("ray", ["backend=ray", "ray.workers=2"])):
            cfg = _cfg(tmp_path, folder, "eval.per_client=true", f"name={name}", *extra)
            execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False), plot=False)
            records = read_records(tmp_path / "runs" / name / "metrics.jsonl")
            params = load_file(tmp_path / "runs" / name / "adapter.safetensors")
            runs[name] = ([{k: v for k, v in r.items() if k != "seconds"} for r in records], params)
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    assert runs["ray"][0] == runs["local"][0]
    assert "client_preference_accuracy_mean" in runs["ray"][0][-1]
    assert all(torch.equal(runs["ray"][1][k], v) for k, v in runs["local"][1].items())
