"""The README's config table is generated from the config dataclasses' field docs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedfm.config import RunConfig, _flat
from fedfm.config_table import END, STALE, START, config_table, main, readme_block, with_table

README = Path(__file__).resolve().parents[1] / "README.md"


def _config_classes() -> list[type]:
    """RunConfig and every config dataclass nested in it."""
    cfg = RunConfig()
    nested = [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    return [RunConfig] + [type(v) for v in nested if dataclasses.is_dataclass(v)]


def test_readme_table_is_up_to_date() -> None:
    block = readme_block(README.read_text(encoding="utf-8"))
    assert block == config_table(), STALE


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_field_has_a_doc(cls: type) -> None:
    undocumented = [
        f.name for f in dataclasses.fields(cls) if not f.metadata.get("doc", "").strip()
    ]
    assert not undocumented, f"{cls.__name__} fields without a doc: {undocumented}"


def test_table_lists_every_key_once() -> None:
    table = config_table()
    keys = list(_flat(RunConfig()))
    for key in keys:
        assert table.count(f"| `{key}` |") == 1, f"config key {key} is not in the table once"
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(keys)


def test_defaults_are_written_as_toml() -> None:
    table = config_table()
    for row in (
        '| `data.dataset` | `"trec6"` |',
        "| `data.alpha` | `0.5` |",
        "| `data.label_names` | `[]` |",
        "| `model.pretrained` | `true` |",
        "| `privacy.delta` | `1e-05` |",
    ):
        assert row in table


def test_write_replaces_only_the_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nprose\n\n{START}\nold table\n{END}\n\nmore prose\n")
    assert main(["--check", str(readme)]) == 1
    assert main(["--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nprose\n\n") and text.endswith(f"{END}\n\nmore prose\n")
    assert readme_block(text) == config_table()
    assert main(["--check", str(readme)]) == 0


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="config-table:start"):
        with_table("# no markers here\n", config_table())
