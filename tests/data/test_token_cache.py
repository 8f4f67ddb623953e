"""A dataset file's token ids: the same ids as tokenising a list, cached on disk by content."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from fedfm import filehash
from fedfm.config import DataConfig
from fedfm.data.batching import batches, encode
from fedfm.data.filehash import data_digest
from fedfm.data.load import load_data
from fedfm.data.token_cache import RaggedIds
from fedfm.resources.types import Split


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from fedfm.resources.models import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


class Counting:
    """A tokenizer that counts the texts it is asked to tokenise."""

    def __init__(self, inner):
        self.inner, self.texts = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __call__(self, texts, *args, **kwargs):
        self.texts += len(texts)
        return self.inner(texts, *args, **kwargs)


def _file(tmp_path, n=40):
    frame = pd.DataFrame(
        {
            "text": [f"question number {i} about {'x ' * (i % 7)}things" for i in range(n)],
            "answer": [f"answer {i}" for i in range(n)],
            "label": [f"c{i % 3}" for i in range(n)],
        }
    )
    path = tmp_path / "qa.parquet"
    frame.to_parquet(path)
    return path, frame


def test_cached_ids_equal_tokenising_the_list_and_the_second_run_skips_the_tokenizer(
    tmp_path, tokenizer
):
    path, _ = _file(tmp_path)
    ds = load_data(DataConfig(dataset=str(path)))
    counting = Counting(tokenizer)
    first = encode(ds.train, counting, max_length=8)
    assert isinstance(first.ids, RaggedIds)
    assert counting.texts == 40  # every row once (train and test share the cache)
    plain = encode(Split(list(ds.train.inputs), ds.train.labels), tokenizer, max_length=8)
    assert len(first) == len(plain)
    pairs = zip(first.ids, plain.ids, strict=True)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in pairs)
    assert np.array_equal(first.lengths(), plain.lengths())
    encode(ds.test, counting, max_length=8)
    encode(ds.train, counting, max_length=8)
    assert counting.texts == 40  # read from disk, not tokenised again
    encode(ds.train, counting, max_length=12)
    assert counting.texts == 80  # another max_length is another key
    one = next(batches(first, np.arange(len(first)), batch_size=4, causal_lm=False, seed=0))
    assert one["input_ids"].shape[0] == 4 and one["labels"].dtype.is_floating_point is False


def test_pairs_are_encoded_as_pairs(tmp_path, tokenizer):
    path, frame = _file(tmp_path)
    ds = load_data(DataConfig(dataset=str(path), text_pair_column="answer"))
    encoded = encode(ds.test, tokenizer, max_length=16)
    for k, item in enumerate(ds.test.inputs):
        text, answer = item.split("\n")
        expected = tokenizer(text, answer, truncation=True, max_length=16)["input_ids"]
        assert encoded.ids[k].tolist() == expected
        assert tokenizer.sep_token_id in encoded.ids[k][1:-1]  # [CLS] a [SEP] b [SEP]


def test_a_changed_file_is_tokenised_again(tmp_path, tokenizer):
    path, frame = _file(tmp_path)
    counting = Counting(tokenizer)
    encode(load_data(DataConfig(dataset=str(path))).train, counting, max_length=8)
    frame.loc[0, "text"] = "a different first question"
    frame.to_parquet(path)
    ds = load_data(DataConfig(dataset=str(path)))
    encoded = encode(ds.train, counting, max_length=8)
    assert counting.texts == 80
    texts = list(ds.train.inputs)
    if "a different first question" in texts:
        k = texts.index("a different first question")
        expected = tokenizer("a different first question", truncation=True, max_length=8)
        assert encoded.ids[k].tolist() == expected["input_ids"]


def test_the_file_digest_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "data.csv"
    path.write_text("text,label\na,0\n")
    calls = []
    real = filehash._file_sha256
    monkeypatch.setattr(filehash, "_file_sha256", lambda p: calls.append(p) or real(p))
    first = data_digest(path)
    assert data_digest(path) == first and len(calls) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: hashed again
    assert data_digest(path) == first and len(calls) == 2
    path.write_text("text,label\nb,0\n")
    assert data_digest(path) != first


def test_ragged_ids_index_and_join():
    ids = RaggedIds(np.arange(6, dtype=np.int32), np.array([0, 1, 3, 6]))
    view = ids[np.array([2, 0])]
    assert [x.tolist() for x in view] == [[3, 4, 5], [0]]
    assert view.lengths().tolist() == [3, 1]
    assert [x.tolist() for x in view + [np.array([9])]] == [[3, 4, 5], [0], [9]]
    assert [x.tolist() for x in [np.array([9])] + view] == [[9], [3, 4, 5], [0]]
