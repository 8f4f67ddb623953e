"""The curated public API: every exported name resolves, and importing fedfm stays light."""

import subprocess
import sys

import pytest

import fedfm


@pytest.mark.parametrize("name", sorted(fedfm.__all__))
def test_every_exported_name_resolves(name):
    assert getattr(fedfm, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        _ = fedfm.nothing


def test_import_fedfm_loads_no_heavy_library():
    code = "import sys, fedfm; print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
