"""Save a randomly initialised model of a config's architecture, with its tokenizer.

On the device machine, from the kit's ``minilm/`` (config and tokenizer, no weights):
MiniLM's shape with seeded random weights, which train as fast as the real ones.

    python3 benchmarks/device/random_model.py .gpu/minilm /tmp/minilm
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    source, dest = Path(argv[0]), Path(argv[1])
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(dest)
    for path in source.iterdir():
        if path.name != "config.json":
            shutil.copy2(path, dest / path.name)
    print(f"wrote {dest}: {sum(p.numel() for p in model.parameters()):,} random params")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
