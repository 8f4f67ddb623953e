"""Tiny random-init Hugging Face model folders, built offline in about a second, for tests.

Each folder is what a user brings: ``config.json``, ``model.safetensors`` and a tokenizer,
written with ``save_pretrained``. The weights are random (seeded), a few hundred thousand
parameters, so a federated run on them takes seconds; the tokenizers are real (MiniLM's
WordPiece for the encoders' vocabulary where it matters, a byte-level BPE trained here for
the decoders and RoBERTa).

Example:
    >>> from tiny_models import make_tiny_model   # ``tests/`` is on ``sys.path`` under pytest
    >>> folder = make_tiny_model("llama", tmp_path / "llama")
    >>> sorted(p.name for p in folder.iterdir())[:2]
    ['config.json', 'generation_config.json']

Pytest fixtures: ``tiny_model_dirs`` (session-scoped, ``{kind: folder}`` for every kind in
:data:`KINDS`, built once) in ``tests/conftest.py``.

Kinds and what they exercise:

| kind | saved class | tokenizer | pad token |
|---|---|---|---|
| bert | ``BertModel`` (a bare encoder, like MiniLM) | MiniLM's WordPiece | ``[PAD]`` |
| roberta | ``RobertaForMaskedLM`` (like roberta-base: no pooler) | BPE | ``<pad>`` |
| llama | ``LlamaForCausalLM`` (tied embeddings) | BPE | none |
| qwen2 | ``Qwen2ForCausalLM`` (tied embeddings) | BPE | ``<|endoftext|>`` |
| gpt2 | ``GPT2LMHeadModel`` | BPE | none |
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

KINDS = ("bert", "roberta", "llama", "qwen2", "gpt2")
ENCODERS = ("bert", "roberta")  # classification only
DECODERS = ("llama", "qwen2", "gpt2")  # causal LM and classification
BPE_VOCAB = 512

# Enough English for a byte-level BPE to learn a few hundred merges of common words.
_CORPUS = (
    "What is the capital of France? Who wrote the play Hamlet? How many feet are in a mile? "
    "When did the war end? Where is the tallest mountain in the world? Why is the sky blue? "
    "Free entry in a weekly competition to win tickets, text WIN now to claim your prize. "
    "Hey, are we still meeting for lunch today? I will call you later tonight, ok? "
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
    "The quick brown fox jumps over the lazy dog. 0123456789 numbers and dates, 1999, 2024. "
)


def make_tiny_model(kind: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-init model of ``kind`` with its tokenizer into ``folder``.

    Args:
        kind: one of :data:`KINDS` (``bert``, ``roberta``, ``llama``, ``qwen2``, ``gpt2``).
        folder: where to write (created; an existing folder is overwritten file by file).
        seed: seeds the random weights: the same seed writes the same weights.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`, loadable with ``from_pretrained``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind = {kind!r} is not one of {KINDS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _minilm_tokenizer(folder) if kind == "bert" else _bpe_tokenizer(kind)
    config = _config(kind, tokenizer)
    auto = {
        "bert": transformers.AutoModel,
        "roberta": transformers.AutoModelForMaskedLM,
    }.get(kind, transformers.AutoModelForCausalLM)
    from fedfm.resources.models import quiet_transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        model = auto.from_config(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def _config(kind: str, tok: transformers.PreTrainedTokenizerBase) -> transformers.PretrainedConfig:
    vocab = len(tok)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    if kind == "bert":
        return transformers.BertConfig(
            vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    if kind == "roberta":  # positions start after the pad id: 128 + 2 slots
        return transformers.RobertaConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
            type_vocab_size=1, **ids,
        )  # fmt: skip
    if kind == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids
        )
    config_class = transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config
    return config_class(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, **ids,
    )  # fmt: skip


def _minilm_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    """MiniLM's WordPiece tokenizer files, copied next to the model."""
    from fedfm.resources.models import minilm_dir

    source = minilm_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    return transformers.AutoTokenizer.from_pretrained(folder)


# kind -> (special tokens in id order, bos, eos, pad)
_SPECIALS: dict[str, tuple[tuple[str, ...], str | None, str, str | None]] = {
    "roberta": (("<s>", "<pad>", "</s>", "<unk>", "<mask>"), "<s>", "</s>", "<pad>"),
    "llama": (("<unk>", "<s>", "</s>"), "<s>", "</s>", None),
    "qwen2": (
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        None,
        "<|endoftext|>",
        "<|endoftext|>",
    ),
    "gpt2": (("<|endoftext|>",), "<|endoftext|>", "<|endoftext|>", None),
}


def _bpe_tokenizer(kind: str) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE of :data:`BPE_VOCAB` tokens with ``kind``'s special tokens."""
    specials, bos, eos, pad = _SPECIALS[kind]
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_bpe(specials)),
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token="<unk>" if "<unk>" in specials else None,
        mask_token="<mask>" if "<mask>" in specials else None,
    )
    if kind == "roberta":  # <s> text </s>, as RoBERTa's tokenizer adds
        fast.backend_tokenizer.post_processor = processors.RobertaProcessing(
            ("</s>", fast.eos_token_id), ("<s>", fast.bos_token_id)
        )
    elif kind == "llama":  # <s> text, as Llama's tokenizer adds
        fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", fast.bos_token_id)]
        )
    return fast


@functools.cache
def _trained_bpe(specials: tuple[str, ...]) -> str:
    """A byte-level BPE trained on :data:`_CORPUS` (~20 ms), as tokenizer JSON."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok.to_str()


def deeper_bert(source: Path, folder: Path, layers: int) -> Path:
    """The tiny BERT in ``source`` rebuilt with ``layers`` layers (random init, seed 0) in
    ``folder``, with its tokenizer files: room for layer cuts the 2-layer one lacks."""
    config = transformers.BertConfig.from_pretrained(source)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    for path in source.iterdir():
        if "token" in path.name or path.name == "vocab.txt":
            shutil.copy2(path, folder / path.name)
    return folder
