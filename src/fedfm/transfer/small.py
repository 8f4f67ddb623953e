"""A small client model made offline: a random-init BERT of a few layers over the FM's
(MiniLM's) tokenizer, written once as a Hugging Face folder that ``model.name`` can name.

Example:
    >>> folder = small_text_model(layers=2, hidden=64)  # doctest: +SKIP
    >>> load_config(None, [f"model.name={folder}", "adapter.method=full"])  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fedfm.io import staged_folder
from fedfm.resources.models import cache_root, minilm_dir, quiet_transformers

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def small_text_model(
    *, layers: int = 2, hidden: int = 64, heads: int = 2, seed: int = 0, root: Path | None = None
) -> Path:
    """The folder of a random-init ``layers``-layer BERT (``hidden`` wide, ``heads`` heads,
    feed-forward ``2 * hidden``, 128 positions) with MiniLM's WordPiece tokenizer, built on
    first use under ``root`` (default ``$FEDFM_CACHE/models``) and reused after; the
    weights are seeded by ``seed``. Written in a staging folder renamed into place, so a crash
    never leaves half a model."""
    import transformers

    root = root if root is not None else cache_root() / "models"
    target = root / f"small-bert-l{layers}-h{hidden}-a{heads}-s{seed}"
    if (target / "config.json").is_file():
        return target
    source = minilm_dir(what="the small client model's tokenizer (MiniLM's)")
    with staged_folder(target) as staging:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(staging)
        config = transformers.BertConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=2 * hidden,
            max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        with torch.random.fork_rng(), quiet_transformers():
            torch.manual_seed(seed)
            transformers.AutoModel.from_config(config).save_pretrained(staging)
    return target
