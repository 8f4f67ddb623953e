"""Each built-in dataset is one module of fedfm.datasets: loader, label names, description."""

from __future__ import annotations

import importlib

import pytest

import fedfm.datasets
from fedfm.datasets import DATASETS, BuiltinDataset, SyntheticDescription, load_dataset
from fedfm.datasets.common import register
from fedfm.resources.types import CLASSIFICATION
from fedfm.synthetic.prompts import label_spec

NAMES = DATASETS.names()
# name -> (its module, its loader's name) where not (name, "load"): one module, two views
SHARED_MODULE = {"instruct-pref": ("instruct", "load_preferences")}


def test_the_registry_holds_the_built_in_datasets() -> None:
    assert NAMES == [
        "digits",
        "instruct",
        "instruct-pref",
        "sentiment4",
        "shakespeare",
        "sms_spam",
        "trec6",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_each_dataset_is_one_module_that_registers_its_own_entry(name: str) -> None:
    module_name, loader = SHARED_MODULE.get(name, (name, "load"))
    module = importlib.import_module(f"fedfm.datasets.{module_name}")
    entry = DATASETS.get(name)
    assert isinstance(entry, BuiltinDataset) and entry.name == name
    assert entry.load is getattr(module, loader)
    assert getattr(fedfm.datasets, module_name) is module  # imported by the package's list
    assert entry.label_names == getattr(module, "LABEL_NAMES", ())


@pytest.mark.parametrize("name", NAMES)
def test_label_names_and_description_match_what_the_loader_returns(name: str) -> None:
    ds = load_dataset(name)
    entry = DATASETS.get(name)
    assert ds.name == name and ds.label_names == entry.label_names
    if ds.task == CLASSIFICATION:
        assert len(entry.label_names) >= 2
    if ds.task == CLASSIFICATION and ds.modality == "text":
        synthetic = entry.synthetic
        assert synthetic is not None, f"{name} is text classification: it needs a description"
        assert list(synthetic.descriptions) == list(entry.label_names)  # one per label, in order
        assert all(synthetic.descriptions.values())
        assert set(synthetic.examples) <= set(entry.label_names)
        for label, text in enumerate(entry.label_names):
            header = synthetic.template.format(
                label=text, description=synthetic.descriptions[text], topic="music"
            )
            assert "music" in header and "{" not in header, (name, label)
    else:
        assert entry.synthetic is None


@pytest.mark.parametrize("name", [n for n in NAMES if DATASETS.get(n).synthetic])
def test_prompts_read_the_description_from_the_dataset_module(name: str) -> None:
    entry = DATASETS.get(name)
    spec = label_spec(name, entry.label_names)
    assert entry.synthetic is not None
    assert spec.template == entry.synthetic.template
    assert spec.descriptions == tuple(entry.synthetic.descriptions[n] for n in entry.label_names)
    assert spec.seed_examples == tuple(
        tuple(entry.synthetic.examples.get(n, ())) for n in entry.label_names
    )


def test_a_description_that_misses_a_label_is_refused() -> None:
    synthetic = SyntheticDescription("About {topic}: {description}.", {"cat": "a cat"})
    with pytest.raises(ValueError, match=r"dataset 'pets'.*\['cat', 'dog'\]"):
        BuiltinDataset("pets", load_dataset, ("cat", "dog"), synthetic)


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="'trec6' is already registered"):
        register(BuiltinDataset("trec6", DATASETS.get("trec6").load))
