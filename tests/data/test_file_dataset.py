"""Dataset files (CSV, TSV, JSONL, Parquet, save_to_disk) read into fedfm's Dataset."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from fedfm.config import DataConfig
from fedfm.data.federation import build_federation, subsample, take
from fedfm.data.file_dataset import read_file_dataset
from fedfm.data.load import load_data
from fedfm.data.texts import TextColumn
from fedfm.datasets import load_dataset, split_indices
from fedfm.errors import ConfigError

ROWS = [  # text, label, shop, split
    ("the soup was great", "pos", "north", "train"),
    ("cold and bland", "neg", "north", "train"),
    ("lovely staff", "pos", "north", "test"),
    ("never again", "neg", "north", "train"),
    ("best pizza in town", "pos", "south", "train"),
    ("rude waiter", "neg", "south", "test"),
    ("will come back", "pos", "south", "train"),
    ("overpriced", "neg", "south", "train"),
    ("fresh and tasty", "pos", "east", "train"),
    ("too salty", "neg", "east", "train"),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _frame(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label", "shop", "split"])


def write(tmp_path: Path, kind: str, frame: pd.DataFrame | None = None) -> Path:
    """The rows as a file (or folder) of ``kind``."""
    frame = _frame() if frame is None else frame
    path = tmp_path / f"reviews.{kind}"
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif kind == "parquet":
        frame.to_parquet(path)
    else:
        path = tmp_path / "reviews"
        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet", "disk"])
def test_every_format_reads_to_the_same_dataset(tmp_path, kind):
    ds = load_data(DataConfig(dataset=str(write(tmp_path, kind)), group_column="shop"))
    assert (ds.name, ds.task, ds.label_names) == ("reviews", "classification", ("neg", "pos"))
    assert isinstance(ds.train.inputs, TextColumn)
    # the seeded split is the registry's: stratified by (group, label), fixed SPLIT_SEED
    everything = [r[0] for r in ROWS]
    strata = [f"{r[2]}:{r[1]}" for r in ROWS]
    train_idx, test_idx = split_indices(strata)
    assert list(ds.train.inputs) == [everything[i] for i in train_idx]
    assert list(ds.test.inputs) == [everything[i] for i in test_idx]
    assert ds.train.labels.tolist() == [int(ROWS[i][1] == "pos") for i in train_idx]
    assert ds.train.groups.tolist() == [ROWS[i][2] for i in train_idx]
    assert ds.test.groups.dtype.kind == "U"


def test_split_column_and_dataset_dict_keep_their_own_test_rows(tmp_path):
    path = write(tmp_path, "csv")
    ds = load_data(DataConfig(dataset=str(path), split_column="split"))
    assert list(ds.test.inputs) == ["lovely staff", "rude waiter"]
    assert len(ds.train) == 8
    frame = _frame()
    folder = tmp_path / "dict"
    datasets.DatasetDict(
        train=datasets.Dataset.from_pandas(frame[frame.split == "train"], preserve_index=False),
        test=datasets.Dataset.from_pandas(frame[frame.split == "test"], preserve_index=False),
    ).save_to_disk(str(folder))
    ds = load_data(DataConfig(dataset=str(folder)))
    assert list(ds.test.inputs) == ["lovely staff", "rude waiter"]
    assert ds.train.labels.tolist() == [1, 0, 0, 1, 1, 0, 1, 0]


@pytest.mark.parametrize(
    ("labels", "names", "ids"),
    [
        ([10, 2, 2, 10, 7], ("2", "7", "10"), [2, 0, 0, 2, 1]),  # ids sorted numerically
        (["b", "a", "c", "a", "b"], ("a", "b", "c"), [1, 0, 2, 0, 1]),  # names sorted
        ([1.0, 0.0, 1.0, 0.0, 1.0], ("0", "1"), [1, 0, 1, 0, 1]),  # integral floats
    ],
)
def test_label_names_are_kept_in_id_order(tmp_path, labels, names, ids):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(5)], "label": labels})
    ds = load_data(DataConfig(dataset=str(write(tmp_path, "parquet", frame)), split_column=""))
    assert ds.label_names == names
    got = np.empty(5, dtype=np.int64)
    for split in (ds.train, ds.test):
        for text, label in zip(split.inputs, split.labels, strict=True):
            got[int(text[1:])] = label
    assert got.tolist() == ids


def test_class_label_names_and_declared_names(tmp_path):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["zeta", "alpha"])}
    )
    folder = tmp_path / "cl"
    data = {"text": ["a", "b", "c", "d"], "label": [0, 1, 1, 0]}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(folder))
    ds = load_data(DataConfig(dataset=str(folder)))
    assert ds.label_names == ("zeta", "alpha")  # ClassLabel's order, not sorted
    path = write(tmp_path, "csv")
    ds = load_data(DataConfig(dataset=str(path), label_names=("pos", "neg", "meh")))
    assert ds.label_names == ("pos", "neg", "meh")
    assert sorted(set(ds.train.labels.tolist())) == [0, 1]


def test_a_file_without_labels_is_a_causal_lm_corpus(tmp_path):
    frame = pd.DataFrame({"text": [f"line {i}" for i in range(10)], "who": ["a", "b"] * 5})
    path = write(tmp_path, "jsonl", frame)
    ds = load_data(DataConfig(dataset=str(path), group_column="who", partition="natural"))
    assert (ds.task, ds.label_names, ds.train.labels) == ("causal_lm", (), None)
    assert len(ds.train) + len(ds.test) == 10
    assert set(ds.test.groups) == {"a", "b"}  # stratified by group
    text = tmp_path / "corpus.txt"
    text.write_text("first document\n\n  \nsecond one\nthird\nfourth\nfifth\n")
    ds = load_data(DataConfig(dataset=str(text), partition="iid"))
    assert ds.task == "causal_lm"
    assert sorted(list(ds.train.inputs) + list(ds.test.inputs)) == sorted(
        ["first document", "second one", "third", "fourth", "fifth"]
    )  # blank lines dropped


def test_pairs_read_as_one_string_and_the_natural_partition_uses_the_group(tmp_path):
    frame = _frame().assign(reply=[f"r{i}" for i in range(len(ROWS))])
    cfg = DataConfig(
        dataset=str(write(tmp_path, "csv", frame)),
        text_pair_column="reply",
        group_column="shop",
        partition="natural",
        num_clients=0,
        min_client_size=1,
        client_eval_fraction=0.0,
    )
    ds = load_data(cfg)
    texts = [r[0] for r in ROWS]
    for item in ds.train.inputs:  # each pair as "text\nreply", the reply of its own row
        text, reply = item.split("\n")
        assert reply == f"r{texts.index(text)}"
    federation = build_federation(ds.train, cfg, seed=0)
    assert [c.name for c in federation.clients] == ["east", "north", "south"]
    east = take(ds.train, federation.clients[0].train)
    assert set(east.groups) == {"east"} and isinstance(east.inputs, TextColumn)
    assert len(subsample(ds.train, 3, seed=0)) == 3


def test_text_column_is_a_lazy_view():
    import pyarrow as pa

    col = TextColumn(pa.chunked_array([["a", "b"], ["c", "d", "e"]]))
    view = col[np.array([4, 0, 2])]
    assert (len(view), view[0], view[-1], list(view[1:])) == (3, "e", "c", ["a", "c"])
    assert view.source_rows.tolist() == [4, 0, 2]
    with pytest.raises(IndexError):
        view[3]


def test_a_registry_name_still_loads_the_registry_dataset():
    assert load_data(DataConfig(dataset="digits")) is load_dataset("digits")
    with pytest.raises(ConfigError, match="data.task = 'causal_lm', but data.dataset = 'digits'"):
        load_data(DataConfig(dataset="digits", task="causal_lm"))


def _bad_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"text": "fine", "label": "a"})
    path.write_text("\n".join([good, good, "", good, '{"text": "oops", label: "b"}', good]))
    return path


BAD_INPUTS = [
    # (what to write, config overrides, message pieces)
    (None, {"dataset": "nope/missing.csv"}, ["missing.csv", "no such file"]),
    ("data.xlsx", {}, ["'.xlsx' files", ".parquet"]),
    (None, {"dataset": "notes.md"}, ["notes.md", "no such file"]),
    ("empty.csv", {}, ["empty.csv is empty"]),
    ("header.csv", {}, ["header.csv holds no rows"]),
    ("reviews.csv", {"text_column": "body"}, ["data.text_column = 'body'", "['text', 'label"]),
    ("reviews.csv", {"label_column": "stars"}, ["data.label_column = 'stars'", "columns are"]),
    ("reviews.csv", {"group_column": "shp"}, ["'shp'", "Did you mean 'shop'"]),
    ("bad.jsonl", {}, ["bad.jsonl line 5 is not a JSON object"]),
    ("one.csv", {}, ["holds 1 class ('pos')", "data.task = 'causal_lm'"]),
    ("reviews.csv", {"split_column": "shop"}, ["['east', 'north', 'south']", "'train' or 'test'"]),
    ("numbers.csv", {}, ["data.text_column = 'text' holds int64"]),
    ("reviews.csv", {"partition": "natural"}, ["data.group_column", "is empty"]),
    ("hole.csv", {}, ["row 2 has no 'text'"]),
    ("category.csv", {"partition": "dirichlet"}, ["no label column 'label'", "'category'"]),
    (None, {"dataset": "trec-6"}, ["neither a registered dataset", "Did you mean 'trec6'"]),
]


@pytest.mark.parametrize(("name", "overrides", "pieces"), BAD_INPUTS)
def test_bad_input_gets_one_clear_line(tmp_path, name, overrides, pieces):
    if name is not None:
        path = tmp_path / name
        if name == "bad.jsonl":
            _bad_jsonl(tmp_path)
        elif name == "empty.csv" or name == "data.xlsx":
            path.write_text("")
        elif name == "header.csv":
            path.write_text("text,label\n")
        elif name == "one.csv":
            path.write_text("text,label\na,pos\nb,pos\n")
        elif name == "numbers.csv":
            path.write_text("text,label\n1,a\n2,b\n")
        elif name == "hole.csv":
            path.write_text("text,label\na,x\n,y\nc,x\n")
        elif name == "category.csv":
            path.write_text("text,category\na,x\nb,y\n")
        else:
            write(tmp_path, "csv")
        overrides = {"dataset": str(path), **overrides}
    with pytest.raises(ConfigError) as info:
        load_data(DataConfig(**overrides))
    message = str(info.value)
    assert "\n" not in message.removeprefix("invalid config:\n  ")
    for piece in pieces:
        assert piece in message


def test_config_refuses_column_keys_that_cannot_be_right():
    from fedfm.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.text_column=label", "data.label_names=['a', 'a']"])
    assert info.value.problems == [
        "data.label_names = ['a', 'a'] repeats ['a']: list each class once",
        "data.text_column and data.label_column both name column 'label': give each its own",
    ]


def test_a_rewritten_file_is_read_again(tmp_path):
    path = write(tmp_path, "csv")
    first = read_file_dataset(DataConfig(dataset=str(path)))
    frame = _frame()
    frame.loc[0, "text"] = "changed"
    frame.to_csv(path, index=False)
    second = read_file_dataset(DataConfig(dataset=str(path)))
    texts = list(second.train.inputs) + list(second.test.inputs)
    assert "changed" in texts and first is not second
