"""A remote client's own file (``fedfm join --data``), read with the server's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfm.config import load_config
from fedfm.data.own import own_job_config, read_own_data
from fedfm.errors import ConfigError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _server(*extra: str):
    """The config a server sends for its own file, resolved (task and label names)."""
    return load_config(
        None,
        [
            "data.dataset=/on/the/server/reviews.csv",
            "data.text_column=review",
            "data.task=classification",
            "data.label_names=['neg', 'meh', 'pos']",
            "data.group_column=shop",
            "data.partition=natural",
            *extra,
        ],
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clinic.csv"
    path.write_text(text)
    return path


def test_own_file_maps_labels_onto_the_servers_names(tmp_path):
    path = _write(tmp_path, "review,label,split\ngood,pos,train\nbad,neg,train\nok,1,test\n")
    split = read_own_data(path, _server("data.split_column=split"))
    assert list(split.inputs) == ["good", "bad"]  # the split column keeps its train rows
    assert split.labels.tolist() == [2, 0]  # the server's ids; this client lacks 'meh'
    path = _write(tmp_path, "review,label\ngood,pos\nso so,1\n")  # no split column: all rows
    assert read_own_data(path, _server("data.split_column=split")).labels.tolist() == [2, 1]


def test_own_file_with_other_columns_or_labels_is_refused_listing_both(tmp_path):
    path = _write(tmp_path, "text,label\ngood,pos\n")
    with pytest.raises(ConfigError) as info:
        read_own_data(path, _server())
    message = str(info.value)
    assert f"--data {path}: data.text_column = 'review'" in message
    assert "the server's config: text_column = 'review', label_column = 'label'" in message
    assert "whose columns are ['text', 'label']" in message
    path = _write(tmp_path, "review,label\ngood,pos\nodd,weird\n")
    with pytest.raises(ConfigError) as info:
        read_own_data(path, _server())
    message = str(info.value)
    assert "holds the labels ['pos', 'weird']" in message
    assert "the label names are ['neg', 'meh', 'pos']" in message
    assert "['weird'] are not among them" in message


def test_the_client_job_reads_its_own_file_in_place_of_the_servers(tmp_path):
    path = _write(tmp_path, "review,label\n" + "".join(f"r{i},neg\n" for i in range(6)))
    cfg = own_job_config(_server(), path)
    assert cfg.data.dataset == str(path)
    assert (cfg.data.partition, cfg.data.group_column, cfg.data.min_client_size) == ("iid", "", 1)
    assert cfg.data.label_names == ("neg", "meh", "pos")  # the head keeps the server's size
    from fedfm.data.load import load_data

    dataset = load_data(cfg.data)  # one class is fine: the names are declared
    assert dataset.label_names == ("neg", "meh", "pos")
    registry = load_config(None, ["data.dataset=sms_spam"])
    assert own_job_config(registry, path) is registry  # a registry dataset ships with fedfm


def test_join_refuses_a_mismatched_file_before_any_model_loads(tmp_path, monkeypatch):
    from fedfm.runtime.remote import client

    cfg = _server("remote.clients=['c0', 'c1']", "data.num_clients=2", "remote.insecure=true")
    monkeypatch.setattr(client, "fetch_config", lambda conn, **kw: cfg)

    def no_model(*args, **kwargs):
        raise AssertionError("the job was built before the file was checked")

    monkeypatch.setattr(client, "build_job", no_model)
    path = _write(tmp_path, "review,stars\ngood,5\n")
    conn = client.Connection("localhost:1", "c0", "", insecure=True)
    with pytest.raises(ConfigError, match=r"data.label_column = 'label' \(the server's config"):
        client.join(conn, data=str(path))
