"""What does split fine-tuning (``split.enabled``) save a weak client, and what does it send?

MiniLM (6 layers, hidden 384) + LoRA (r = 8, query/value) + a classifier head on TREC-6,
client 0's batches (``client.batch_size = 32``) as its local training draws them. One
worker process builds the job once and times, on the same batches, in train mode (dropout
on):

* **full**: an ordinary client's step, ``task.loss`` + ``backward`` through the whole model;
* **split k** (k = 1, 2, 3): the client's half of a split step only, ``client_forward``
  (embeddings and layers ``0..k-1``, kept graph) + ``client_backward`` (from the gradient
  the server sent); the server's step runs in between, untimed.

The optimiser step (a few thousand LoRA values) is left out of both arms. The arms run in
ABBA order (``full, split 1, split 2, split 3`` then the reverse, alternately) over
``--repeats`` passes, so machine noise hits them alike; each arm's figure is the median over
passes of its mean seconds per step, and the ratio is full / split per pass, then the median.
Bytes per step are the exact payloads a split step sends up (activations, attention mask,
labels) and down (the gradient of the activations), against the client's LoRA update (the
upload of an ordinary client, and of a split client: the tensors below layer k only).

Writes ``benchmarks/results/split.json`` with the resolved config.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/split.py      # about 2 minutes, 1 thread
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/split.py --repeats 2 --batches 4
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import (
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    run_worker,
    serve_worker,
    set_threads,
    worker_parser,
    write_json,
)

SCRIPT = Path(__file__).resolve()
CUTS = (1, 2, 3)
BASE = [  # the default job otherwise: MiniLM + LoRA (r=8, query/value) on TREC-6, FedAvg
    "data.num_clients=4",
    "data.max_train_examples=800",
    "data.max_test_examples=400",  # the attacker's reference questions (token recovery)
    "split.enabled=true",
    "checkpoint.every=0",
]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fedfm.client.fit import prepare
    from fedfm.client.split import client_side
    from fedfm.client.state import ClientState
    from fedfm.client.trainer import _epochs_or_steps
    from fedfm.config import load_config, to_toml
    from fedfm.models.params import payload_bytes
    from fedfm.runtime.job import build_job

    set_threads(spec["threads"])
    cfg = load_config(None, BASE)
    job = build_job(cfg)
    base = job.feature("split").split
    names = list(job.initial_params)
    splits = {}
    for k in CUTS:
        client = client_side(names, base.stack, k)
        splits[k] = replace(
            base, layers=k, client_side=client, server_side=frozenset(names) - client
        )
    plan = prepare(
        job.client_context(), job.federation[0], job.initial_params, {}, ClientState(), 1
    )
    batches = []
    for batch in _epochs_or_steps(plan.make_batches, plan.cfg):
        batches.append(batch)
        if len(batches) == spec["batches"]:
            break
    model, task = job.model, job.task
    model.train()

    def zero() -> None:
        for p in model.parameters():
            p.grad = None

    def full_step(batch: dict[str, torch.Tensor]) -> float:
        zero()
        started = time.perf_counter()
        task.loss(model, batch).backward()
        return time.perf_counter() - started

    def split_step(k: int, batch: dict[str, torch.Tensor]) -> tuple[float, int, int]:
        zero()
        step = splits[k].session(seed=0)
        started = time.perf_counter()
        sent = step.client_forward(batch)
        client = time.perf_counter() - started
        _, grad = step.server_step(task, sent)  # the server's half: not the client's time
        assert grad is not None
        started = time.perf_counter()
        step.client_backward(grad)
        client += time.perf_counter() - started
        return client, step.bytes_up, step.bytes_down

    arms = ["full", *(f"split{k}" for k in CUTS)]
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    bytes_: dict[str, list[tuple[int, int]]] = {arm: [] for arm in arms if arm != "full"}
    for batch in batches[:2]:  # warm-up: allocator, kernels
        full_step(batch)
        split_step(CUTS[0], batch)
    for rep in range(spec["repeats"]):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            times = []
            for batch in batches:
                if arm == "full":
                    times.append(full_step(batch))
                else:
                    t, up, down = split_step(int(arm[5:]), batch)
                    times.append(t)
                    if rep == 0:
                        bytes_[arm].append((up, down))
            seconds[arm].append(sum(times) / len(times))
    zero()
    lora = payload_bytes(job.initial_params)  # an ordinary client's upload (and download)
    cuts = {}
    for k in CUTS:
        arm = f"split{k}"
        ups, downs = zip(*bytes_[arm], strict=True)
        client_part = {n: v for n, v in job.initial_params.items() if n in splits[k].client_side}
        cuts[str(k)] = {
            "client_seconds_per_step": median(seconds[arm]),
            "client_seconds_per_pass": seconds[arm],
            "speedup_vs_full": median(
                [f / s for f, s in zip(seconds["full"], seconds[arm], strict=True)]
            ),
            "bytes_up_per_step": sum(ups) / len(ups),
            "bytes_down_per_step": sum(downs) / len(downs),
            "client_update_bytes": payload_bytes(client_part),
            "client_tensors": len(client_part),
        }
    recovery = token_recovery(job, splits, batches)
    steps = len(list(_epochs_or_steps(plan.make_batches, plan.cfg)))
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    return {
        "config": to_toml(cfg),
        "batches": len(batches),
        "batch_shapes": [list(b["input_ids"].shape) for b in batches],
        "real_tokens_per_batch": tokens,
        "client0_steps_per_round": steps,
        "full_seconds_per_step": median(seconds["full"]),
        "full_seconds_per_pass": seconds["full"],
        "lora_update_bytes": lora,
        "layers": len(base.stack.layers),
        "cuts": cuts,
        "token_recovery": recovery,
    }


NOISES = (0.0, 0.5, 2.0, 8.0)  # split.noise levels of the token-recovery attack


def token_recovery(job: Any, splits: dict[int, Any], batches: list[Any]) -> dict[str, Any]:
    """A crude inversion: the server, which holds the backbone, runs it on questions of its
    own (the test split, disjoint from the clients') to layer ``k``, and labels every real
    token a client sent by its nearest neighbour (L2) among those states. Returns the share
    of the client's tokens recovered, special tokens ([CLS], [SEP]) left out."""
    import torch

    from fedfm.data.batching import batches as make_batches
    from fedfm.models.prefix import prefix_states

    model = job.model
    special = torch.tensor(sorted(set(job.tokenizer.all_special_ids)))
    out: dict[str, Any] = {}
    model.eval()
    with torch.no_grad():
        for k, split in splits.items():
            refs, ref_ids = [], []
            reference = make_batches(job.test, range(len(job.test)), batch_size=64, causal_lm=False)
            for batch in reference:
                states = prefix_states(model, split.stack, k, batch)
                real = batch["attention_mask"].bool()
                refs.append(states[real])
                ref_ids.append(batch["input_ids"][real])
            table, table_ids = torch.cat(refs), torch.cat(ref_ids)
            for noise in NOISES if k == min(splits) else (0.0,):
                noisy = replace(split, noise=noise, client_trains=False)
                hit = total = 0
                for batch in batches:
                    sent = noisy.session(seed=k).client_forward(batch).activations
                    keep = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], special)
                    nearest = torch.cdist(sent[keep], table).argmin(dim=1)
                    hit += int((table_ids[nearest] == batch["input_ids"][keep]).sum())
                    total += int(keep.sum())
                out[f"k{k}_noise{noise:g}"] = {"recovered": hit / total, "tokens": total}
            in_table = torch.isin(
                torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in batches]), table_ids
            )
            out[f"k{k}_reference_vocabulary_coverage"] = float(in_table.float().mean())
            out[f"k{k}_activation_std"] = float(table.std())  # the noise's scale against it
    return out


def main(argv: list[str] | None = None) -> int:
    parser = worker_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args(argv)
    if serve_worker(args, worker):
        return 0
    report: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "base_overrides": BASE,
        "timing": "client seconds per step: full = task.loss + backward of the whole model; "
        "split k = client_forward + client_backward (the server's step untimed); optimiser "
        "step excluded from both; arms in ABBA order over passes; medians over passes. "
        "Contended: a 2-core machine shared with other processes",
        "bytes": "exact safetensors payloads: up = activations + attention mask + labels, "
        "down = gradient of the activations; the LoRA update for comparison",
    }
    started = time.perf_counter()
    spec = {"repeats": args.repeats, "batches": args.batches}
    result = run_worker(SCRIPT, spec, threads=args.threads)
    report.update({"spec": spec, **result, "wall_seconds": time.perf_counter() - started})
    check_fingerprint(report)
    write_json(args.out / "split.json", report)
    steps = result["client0_steps_per_round"]
    rows = [
        [
            "full",
            f"{result['full_seconds_per_step'] * 1e3:.1f}",
            "1.00",
            "-",
            "-",
            f"{result['lora_update_bytes']:,}",
        ]
    ]
    for k, c in result["cuts"].items():
        rows.append(
            [
                f"split k={k}",
                f"{c['client_seconds_per_step'] * 1e3:.1f}",
                f"{c['speedup_vs_full']:.2f}",
                f"{c['bytes_up_per_step']:,.0f}",
                f"{c['bytes_down_per_step']:,.0f}",
                f"{c['client_update_bytes']:,}",
            ]
        )
    headers = [
        "client",
        "ms/step",
        "speedup",
        "bytes up/step",
        "bytes down/step",
        "update bytes",
    ]
    print(markdown_table(headers, rows))
    print(f"client 0 takes {steps} steps a round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
