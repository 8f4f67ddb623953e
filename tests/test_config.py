import tomllib

import pytest

from fedfm.config import RunConfig, config_from_dict, load_config, to_toml
from fedfm.errors import ConfigError


def test_defaults_are_the_default_job():
    cfg = load_config(None)
    assert (cfg.data.dataset, cfg.model.name, cfg.adapter.method) == ("trec6", "minilm", "lora")
    assert (cfg.data.num_clients, cfg.data.partition, cfg.data.alpha) == (10, "dirichlet", 0.5)
    assert cfg.strategy.name == "fedavg"


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'rounds = 2\n[strategy]\nname = "fedprox"\n[adapter]\ntarget_modules = ["query"]\n'
    )
    cfg = load_config(path, ["strategy.proximal_mu=0.1", "data.alpha=1", "eval.per_client=true"])
    assert cfg.rounds == 2 and cfg.strategy.name == "fedprox"
    assert cfg.strategy.proximal_mu == 0.1
    assert cfg.data.alpha == 1.0 and isinstance(cfg.data.alpha, float)
    assert cfg.adapter.target_modules == ("query",)
    assert cfg.eval.per_client is True


def test_resolved_config_round_trips():
    cfg = load_config(None, ["name=x", 'adapter.target_modules=["q", "v"]', "client.lr=0.01"])
    assert config_from_dict(tomllib.loads(to_toml(cfg))) == cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["strategy.nme=fedavg"], "unknown key 'strategy.nme'. Did you mean 'name'?"),
        (["dat.alpha=1"], "unknown key 'dat'. Did you mean 'data'?"),
        (["rounds=three"], "rounds = 'three' has type str; expected int"),
        (["rounds=2.5"], "expected int"),
        (["eval.per_client=1"], "expected bool"),
        (["data.alpha=0"], "data.alpha = 0.0 must be > 0"),
        (["adapter.method=lroa"], "Did you mean 'lora'?"),
        (["strategy.fraction=1.5"], "strategy.fraction = 1.5 must be in (0, 1]"),
        (["client.epochs=0"], "client.epochs and client.steps are both 0"),
        (['adapter.target_modules="query"'], "must be a list, e.g."),
        (["rounds"], "must look like key=value"),
        (["device=gpu"], "device = 'gpu' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_bad_config_names_the_field(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.alpha=-1", "client.lr=-1", "bogus=1"])
    message = str(err.value)
    assert "bogus" in message and "client.lr" in message


def test_value_errors_in_dataclass_too():
    with pytest.raises(ConfigError, match="rounds = 0 must be >= 1"):
        RunConfig(rounds=0)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_example_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert len(configs) >= 4
    for path in configs:
        load_config(path)
