"""The README's config table, generated from the config dataclasses' field docs.

Every field in :mod:`fedfm.config` carries its meaning as ``metadata["doc"]`` (see
:func:`fedfm.config.knob`); this module renders them, with the defaults written as TOML
would, as one markdown table grouped by config table (``[data]``, ``[model]``, ...).

    python -m fedfm.config_table                     # print the table
    python -m fedfm.config_table --write README.md   # replace it between the markers
    python -m fedfm.config_table --check README.md   # exit 1 when README.md's is stale

Example:
    >>> [row for row in config_table().splitlines() if row.startswith("| `adapter.rank`")]
    ['| `adapter.rank` | `8` | LoRA rank r |']
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from fedfm.config import RunConfig, _toml_value

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"
STALE = "README config table is stale: run `make config-table`"


def config_table() -> str:
    """The markdown table of every config key: key | default | meaning."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines.extend(_rows(RunConfig(), ""))
    return "\n".join(lines) + "\n"


def _rows(cfg: Any, prefix: str) -> list[str]:
    rows = []
    for f in dataclasses.fields(cfg):
        value, doc = getattr(cfg, f.name), _cell(f.metadata["doc"])
        if dataclasses.is_dataclass(value):
            rows.append(f"| **`[{prefix}{f.name}]`** | | {doc} |")
            rows.extend(_rows(value, f"{prefix}{f.name}."))
        else:
            default = _toml_value(list(value) if isinstance(value, tuple) else value)
            rows.append(f"| `{prefix}{f.name}` | `{default}` | {doc} |")
    return rows


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def readme_block(readme: str) -> str:
    """The text between the README's two markers (without the marker lines)."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {START} ... {END} block for the config table")
    return readme[start + len(START) : end].strip("\n") + "\n"


def with_table(readme: str, table: str) -> str:
    """``readme`` with the block between the markers replaced by ``table``."""
    readme_block(readme)  # raises when the markers are missing
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n\n{table}\n{END}{tail}"  # blank lines: the table stands alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedfm.config_table",
        description="Print the README's config table, or write or check it between its markers.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="README", type=Path, help="replace the table there")
    group.add_argument("--check", metavar="README", type=Path, help="exit 1 when it is stale")
    args = parser.parse_args(argv)
    table = config_table()
    if args.write:
        readme = args.write.read_text(encoding="utf-8")
        updated = with_table(readme, table)
        if updated != readme:
            args.write.write_text(updated, encoding="utf-8")
        print(f"{args.write}: config table {'updated' if updated != readme else 'up to date'}")
    elif args.check:
        if readme_block(args.check.read_text(encoding="utf-8")) != table:
            print(STALE, file=sys.stderr)
            return 1
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
