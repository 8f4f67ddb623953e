"""fedfm's simulation overhead against a hand-written plain PyTorch loop doing the same arithmetic.

For each setting, the same job (model and initial weights, client partition, cohort per round,
batches in the same order, fresh AdamW per client per round, example-weighted FedAvg, one
evaluation at the end) is run twice: by fedfm's ``run_round`` and by ``plain_fedavg`` below,
which touches nothing but numpy and torch inside its timed loop. Both final params must agree
(max abs diff <= 1e-5): that proves the arithmetic is the same, so the time ratio is overhead.

Each measurement runs in its own fresh subprocess (plain, fedfm, plain, fedfm, ...: repeats
interleaved so that machine noise hits both alike). Only the round loop is timed; setup
(data loading, tokenisation, model loading, partitioning) is timed separately. Peak memory is
``getrusage(RUSAGE_SELF).ru_maxrss`` of each worker process (whole process, setup included).

Usage:
    .venv/bin/python benchmarks/overhead.py            # full (about 7 minutes on 2 cores)
    .venv/bin/python benchmarks/overhead.py --quick    # tiny version (seconds)
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    peak_rss_mb,
    proc_status_mb,
    run_worker,
    set_threads,
    write_json,
)

SCRIPT = Path(__file__).resolve()
TOLERANCE = 1e-5
GOAL = 1.05

# client.loss=ce: the plain loop's plain cross-entropy (fedfm's default, "balanced", adds
# each client's label prior to the logits: other arithmetic)
MLP = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=100",
    "strategy.clients_per_round=10",
    "rounds=20",
    "data.min_client_size=5",
    "data.partition=iid",
    "client.lr=0.01",
    "client.loss=ce",
]
# the default job (MiniLM + LoRA on TREC-6, FedAvg) but for the loss
MINILM = ["data.num_clients=10", "rounds=2", "client.loss=ce"]

# interleaved: processes that alternate plain/fedfm `pairs` times (the timing);
# single: ABBA repeats of one fresh process per loop, each running it `inner` times (memory).
SETTINGS: dict[str, dict[str, Any]] = {
    "mlp": {
        "overrides": MLP,
        "interleaved": 3,
        "pairs": 6,
        "single": 1,
        "inner": 3,
        "profile": True,
        "ablate_reps": 10,
    },
    "minilm_lora": {
        "overrides": MINILM,
        "interleaved": 0,
        "pairs": 0,
        "single": 2,
        "inner": 1,
        "profile": False,
    },
}
QUICK: dict[str, dict[str, Any]] = {
    "mlp": {
        "overrides": [*MLP, "rounds=3"],
        "interleaved": 1,
        "pairs": 2,
        "single": 1,
        "inner": 1,
        "profile": True,
        "ablate_reps": 2,
    },
    "minilm_lora": {
        "overrides": [
            *MINILM,
            "rounds=1",
            "data.num_clients=4",
            "data.max_train_examples=120",
            "data.max_test_examples=64",
        ],
        "interleaved": 0,
        "pairs": 0,
        "single": 1,
        "inner": 1,
        "profile": False,
    },
}

# fedfm functions whose cumulative time the profile reports (besides the top entries).
WATCHED = (
    "run_round",
    "fit_client",
    "train_locally",
    "evaluate_global",
    "payload_bytes",
    "serialize",
    "get_params",
    "set_params",
    "check_compatible",
    "trainable_parameters",
    "screen",
    "non_finite",
    "update_statistics",
    "class_scores",
    "decode_upload",
    "receive",
    "prepare",
    "conclude",
    "weighted_average",
    "batches",
    "collate",
    "_epochs_or_steps",
    "client_hooks",
    "client_finish",
    "select",
    "loss",
    "_logits",
    "evaluate",
)


def with_eval_once(overrides: list[str]) -> list[str]:
    """Evaluate once, at the end, in both loops: ``eval.every = rounds``."""
    from fedfm.config import load_config

    cfg = load_config(None, overrides)
    return [*overrides, f"eval.every={cfg.rounds}", "eval.per_client=false"]


# ------------------------------------------------------------------------------ plain loop


def _client_seed(seed: int, round_: int, client_id: int, stream: int) -> int:
    import numpy as np

    return int(np.random.default_rng([seed, round_, client_id, stream]).integers(2**31 - 1))


def plain_fedavg(
    model: Any,
    train: dict[str, Any],
    test: dict[str, Any],
    clients: list[Any],
    init: list[Any],
    hp: dict[str, Any],
) -> tuple[list[Any], dict[str, float]]:
    """FedAvg with a fresh AdamW per client per round, in plain numpy + torch.

    Args:
        model: the module to train in place (its ``requires_grad`` tensors are the params).
        train / test: ``{"x": features}`` or ``{"ids": [token arrays], "pad": id}``, plus
            ``"y"`` (int64 labels).
        clients: each client's training indices.
        init: the initial trainable tensors, in ``model.parameters()`` order.
        hp: seed, rounds, cohort, epochs, batch_size, lr, weight_decay, max_grad_norm,
            eval_batch_size; and ``fedavg_form``: ``"delta"`` (default: ``x + mean(y - x)``,
            the float order fedfm uses since updates carry deltas) or ``"params"``
            (``mean(y)``: the same FedAvg in exact arithmetic, different float rounding).

    Returns:
        The final global tensors and the test metrics of the final model.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    def make_batch(data: dict[str, Any], idx: Any) -> tuple[dict[str, Any], Any]:
        y = torch.from_numpy(data["y"][idx])
        if "x" in data:
            return {"x": torch.from_numpy(data["x"][idx])}, y
        rows = [data["ids"][i] for i in idx]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), data["pad"], dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = r
            mask[j, : len(r)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}, y

    seed, bs = hp["seed"], hp["batch_size"]
    delta_form = hp.get("fedavg_form", "delta") == "delta"
    live = [p for p in model.parameters() if p.requires_grad]
    global_ = [t.clone() for t in init]
    for r in range(1, hp["rounds"] + 1):
        rng = np.random.default_rng([seed, r])
        cohort = sorted(rng.choice(len(clients), size=hp["cohort"], replace=False).tolist())
        new, weights = [], []
        for cid in cohort:
            with torch.no_grad():
                for p, g in zip(live, global_, strict=True):
                    p.copy_(g)
            torch.default_generator.manual_seed(_client_seed(seed, r, cid, 0))  # dropout
            opt = torch.optim.AdamW(live, lr=hp["lr"], weight_decay=hp["weight_decay"])
            model.train()
            loss_sum, steps = 0.0, 0
            for epoch in range(hp["epochs"]):
                shuffle = np.random.default_rng(_client_seed(seed, r, cid, 1 + epoch))
                order = shuffle.permutation(clients[cid])
                for start in range(0, len(order), bs):
                    inputs, y = make_batch(train, order[start : start + bs])
                    loss = F.cross_entropy(model(**inputs).logits, y)
                    loss_sum += loss.item()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if hp["max_grad_norm"] > 0:
                        torch.nn.utils.clip_grad_norm_(live, hp["max_grad_norm"])
                    opt.step()
                    steps += 1
            model.eval()
            if delta_form:  # the client's change y - x
                new.append([p.detach() - g for p, g in zip(live, global_, strict=True)])
            else:  # the client's params y
                new.append([p.detach().clone() for p in live])
            weights.append(len(clients[cid]))
        total = float(sum(weights))
        averaged = []
        for k, ref in enumerate(global_):  # example-weighted mean, accumulated in float64
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for tensors, w in zip(new, weights, strict=True):
                acc += tensors[k].to(torch.float64) * (w / total)
            averaged.append(acc.to(ref.dtype))
        if delta_form:  # x + mean(y - x)
            global_ = [g + a for g, a in zip(global_, averaged, strict=True)]
        else:  # mean(y)
            global_ = averaged

    # evaluate once: test set sorted by length, large batches, inference mode
    with torch.no_grad():
        for p, g in zip(live, global_, strict=True):
            p.copy_(g)
    n_test = len(test["y"])
    lengths = np.array([len(x) for x in test["ids"]]) if "ids" in test else np.ones(n_test)
    order = np.argsort(lengths, kind="stable")
    preds, loss_sum = [], 0.0
    with torch.inference_mode():
        for start in range(0, n_test, hp["eval_batch_size"]):
            inputs, y = make_batch(test, order[start : start + hp["eval_batch_size"]])
            logits = model(**inputs).logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            preds.append(logits.argmax(-1).numpy())
    y_pred, y_true = np.concatenate(preds), test["y"][order]
    return global_, {"accuracy": float((y_pred == y_true).mean()), "loss": loss_sum / n_test}


# ------------------------------------------------------------------------------ worker


def _plain_inputs(job: Any) -> tuple[dict, dict, list, list, dict, list[str]]:
    """What the plain loop needs, as numpy arrays and plain values (setup, untimed).

    Returns ``(train, test, clients, init, hp, names)``: the arguments of
    :func:`plain_fedavg` after the model, and the trainable tensors' names.
    """
    import numpy as np

    cfg = job.cfg

    def data(enc: Any) -> dict[str, Any]:
        y = np.asarray(enc.labels, dtype=np.int64)
        if enc.ids is None:
            return {"x": enc.features, "y": y}
        return {"ids": enc.ids, "pad": enc.pad_id, "y": y}

    names = [n for n, p in job.model.named_parameters() if p.requires_grad]
    init = [job.initial_params[n].clone() for n in names]
    clients = [c.train for c in job.federation.clients]
    hp = {
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "cohort": job.strategy.cohort_size(len(job.federation)),
        "epochs": cfg.client.epochs,
        "batch_size": cfg.client.batch_size,
        "lr": cfg.client.lr,
        "weight_decay": cfg.client.weight_decay,
        "max_grad_norm": cfg.client.max_grad_norm,
        "eval_batch_size": cfg.eval.batch_size,
    }
    return data(job.train), data(job.test), clients, init, hp, names


def _run_fedfm(job: Any) -> tuple[dict, dict[str, float]]:
    from fedfm.runtime.simulation import RoundState, run_round

    state = RoundState(round=0, global_params=job.initial_params)
    record: dict[str, Any] = {}
    for _ in range(job.cfg.rounds):
        record = run_round(job, state)
    metrics = {k[5:]: v for k, v in record.items() if k.startswith("test_")}
    metrics["cum_bytes"] = record["cum_bytes"]  # byte accounting must survive the ablations
    return state.global_params, metrics


# ------------------------------------------------------------------------------ ablation

ABLATIONS = {
    "fedfm": (),
    "fedfm, no update statistics (nor the non-finite screen they carry)": ("update_statistics",),
    "fedfm, no test scores but accuracy and loss": ("class_scores",),
    "fedfm, neither": ("update_statistics", "class_scores"),
    "fedfm, torch's optimizer build, zero_grad and clip (as plain)": ("lean_torch",),
}


def _patch(removed: tuple[str, ...]) -> None:
    """Swap fedfm's bookkeeping for stand-ins that skip it (training arithmetic unchanged):
    the time each one adds. ``update_statistics``: the record's update norms and cosine,
    which are also what finds an update with NaN or Inf (``simulation.screen``; the stand-in's
    norms are finite, so nothing is checked); ``class_scores``: the test set's macro-F1 and
    per-class recall (accuracy and loss stay). ``lean_torch``
    goes the other way: the trainer calls torch as the plain loop does (``zero_grad``,
    ``clip_grad_norm_``; with :func:`_fresh_optimizers`, an optimizer built per client),
    which shows what its leaner calls of the same kernels save.
    """
    import numpy as np
    import torch

    import fedfm.client.trainer as trainer
    import fedfm.runtime.simulation as sim
    import fedfm.tasks as tasks_mod

    if not _ORIGINALS:
        _ORIGINALS.update(
            update_statistics=sim.update_statistics,
            class_scores=tasks_mod.class_scores,
            gradient_clipper=trainer.gradient_clipper,
            torch_optimizers=trainer._TORCH_OPTIMIZERS,
        )
    lean = "lean_torch" not in removed
    trainer._TORCH_OPTIMIZERS = _ORIGINALS["torch_optimizers"] if lean else ()
    trainer.gradient_clipper = (
        _ORIGINALS["gradient_clipper"]
        if lean
        else lambda params, max_norm: functools.partial(
            torch.nn.utils.clip_grad_norm_, params, max_norm
        )
    )
    skip = {
        "update_statistics": lambda deltas: ([0.0] * len(deltas), None),
        "class_scores": lambda _true, _pred, k: (np.zeros(k), np.zeros(k)),
    }
    for name, module in (
        ("update_statistics", sim),
        ("class_scores", tasks_mod),
    ):
        setattr(module, name, skip[name] if name in removed else _ORIGINALS[name])


_ORIGINALS: dict[str, Any] = {}


def _fresh_optimizers(job: Any, fresh: bool) -> None:
    """``fresh``: every client round builds its optimizer (the job's reused one hidden);
    else the job's reused one again."""
    if fresh:
        job.__dict__["optimizer"] = None  # Job.optimizer is a cached property
    elif job.__dict__.get("optimizer", True) is None:
        del job.__dict__["optimizer"]


def _seed_cost(calls: int = 2000) -> dict[str, float]:
    """Microseconds per ``torch.manual_seed`` (every client, both loops) vs the CPU generator's."""
    import torch

    out = {}
    for name, fn in (
        ("torch.manual_seed", torch.manual_seed),
        ("torch.default_generator.manual_seed", torch.default_generator.manual_seed),
    ):
        t = time.perf_counter()
        for i in range(calls):
            fn(i)
        out[name] = (time.perf_counter() - t) / calls * 1e6
    return out


def ablate(job: Any, plain_args: tuple, reps: int) -> dict[str, Any]:
    """Plain, fedfm and fedfm minus one piece of bookkeeping at a time, cycled in one process."""
    variants = ["plain", *ABLATIONS]
    times: dict[str, list[float]] = {v: [] for v in variants}
    cum_bytes: dict[str, float] = {}
    plain_fedavg(job.model, *plain_args), _run_fedfm(job)  # warm-up, untimed
    for rep in range(reps):
        for variant in variants if rep % 2 == 0 else variants[::-1]:
            t = time.perf_counter()
            if variant == "plain":
                plain_fedavg(job.model, *plain_args)
            else:
                _patch(ABLATIONS[variant])
                _fresh_optimizers(job, "lean_torch" in ABLATIONS[variant])
                _, metrics = _run_fedfm(job)
                cum_bytes[variant] = metrics["cum_bytes"]
            times[variant].append(time.perf_counter() - t)
    _patch(())
    _fresh_optimizers(job, False)
    plain = median(times["plain"])
    # the same FedAvg written as mean(y) instead of x + mean(y - x): how far float rounding
    # alone moves the final params (why the plain loop uses fedfm's delta form)
    train, test, clients, init, hp = plain_args
    fedfm_final, _ = _run_fedfm(job)
    names = [n for n, p in job.model.named_parameters() if p.requires_grad]
    forms = {}
    for form in ("delta", "params"):
        final, _ = plain_fedavg(job.model, train, test, clients, init, {**hp, "fedavg_form": form})
        forms[form] = max(
            float((fedfm_final[n].double() - t.double()).abs().max())
            for n, t in zip(names, final, strict=True)
        )
    return {
        "max_abs_diff_to_fedfm_by_fedavg_form": forms,
        "seed_cost_us": _seed_cost(),
        "reps": reps,
        "seconds": {v: median(ts) for v, ts in times.items()},
        "ratio_to_plain": {v: median(ts) / plain for v, ts in times.items()},
        "cum_bytes": cum_bytes,
        "bytes_unchanged": len(set(cum_bytes.values())) == 1,
    }


def worker(spec: dict[str, Any]) -> None:
    """One measurement in this fresh process: ``spec["mode"]`` is plain, fedfm, both or profile.

    ``plain`` / ``fedfm``: run that loop ``inner`` times (peak RSS is then that loop's alone).
    ``both``: alternate the two loops ``pairs`` times in ABBA order (plain-fedfm, fedfm-plain,
    ...) and report the ratio of each pair: the fairest timing on a noisy machine.
    """
    set_threads(spec["threads"])
    import torch

    from fedfm.config import load_config
    from fedfm.runtime.job import build_job

    t0 = time.perf_counter()
    cfg = load_config(None, spec["overrides"])
    job = build_job(cfg)
    setup = time.perf_counter() - t0
    rss_setup = proc_status_mb("VmHWM")
    mode = spec["mode"]
    out: dict[str, Any] = {"mode": mode, "setup_seconds": setup, "rss_after_setup_mb": rss_setup}
    plain_args = _plain_inputs(job)
    names = plain_args[-1]

    def run(which: str) -> tuple[float, dict[str, Any], dict[str, float]]:
        t = time.perf_counter()
        if which == "plain":
            final, metrics = plain_fedavg(job.model, *plain_args[:-1])
            params = dict(zip(names, final, strict=True))
        else:
            params, metrics = _run_fedfm(job)
        return time.perf_counter() - t, params, metrics

    finals: dict[str, dict[str, Any]] = {}
    if mode in ("plain", "fedfm"):
        times = []
        for _ in range(spec["inner"]):
            seconds, finals[mode], metrics = run(mode)
            times.append(seconds)
        out.update({"loop_seconds": times, "loop_seconds_median": median(times)})
    elif mode == "both":
        run("plain"), run("fedfm")  # warm-up, untimed: the first AdamW imports torch._dynamo
        pairs = []
        for i in range(spec["pairs"]):
            order = ("plain", "fedfm") if i % 2 == 0 else ("fedfm", "plain")
            seconds = {}
            for which in order:
                seconds[which], finals[which], metrics = run(which)
            pairs.append({**seconds, "ratio": seconds["fedfm"] / seconds["plain"]})
        out["pairs"] = pairs
    elif mode == "ablate":
        out["ablation"] = ablate(job, plain_args[:-1], spec["ablate_reps"])
        finals["fedfm"], metrics = _run_fedfm(job)
    else:  # profile: one fedfm loop under cProfile (slower than the timed runs)
        run("fedfm")  # warm-up, so one-time costs do not show as hot spots
        profiler = cProfile.Profile()
        profiler.enable()
        seconds, finals["fedfm"], metrics = run("fedfm")
        profiler.disable()
        out["profile"] = _profile_summary(profiler, seconds)

    out.update({"peak_rss_mb": peak_rss_mb(), "test": metrics})
    out["trainable_params"] = sum(t.numel() for t in next(iter(finals.values())).values())
    out["params_files"] = {}
    for which, params in finals.items():
        path = f"{spec['params_out']}.{which}.pt"
        torch.save({k: v.detach().cpu() for k, v in params.items()}, path)
        out["params_files"][which] = path
    Path(spec["result"]).write_text(json.dumps(out))


def _profile_summary(profiler: cProfile.Profile, wall: float) -> dict[str, Any]:
    stats = pstats.Stats(profiler)
    rows, fedfm_self = [], 0.0
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        if "/src/fedfm/" in file:
            fedfm_self += tottime  # time spent in fedfm's own Python lines
        rows.append(
            {
                "function": func,
                "where": f"{_short(file)}:{line}",
                "calls": ncalls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    watched = [
        {**r, "share_of_loop": r["cumtime"] / wall}
        for r in rows
        if r["function"] in WATCHED and r["where"].startswith("fedfm/")
    ]
    watched.sort(key=lambda r: -r["cumtime"])
    top = sorted(rows, key=lambda r: -r["tottime"])[:25]
    return {
        "profiled_loop_seconds": wall,
        "fedfm_self_seconds": fedfm_self,
        "fedfm_self_share": fedfm_self / wall,
        "fedfm_functions": watched,
        "top_tottime": top,
    }


def _short(file: str) -> str:
    for marker in ("/src/fedfm/", "/site-packages/"):
        if marker in file:
            return marker.strip("/").split("/")[-1] + "/" + file.split(marker, 1)[1]
    return file


# ------------------------------------------------------------------------------ driver


def max_abs_diff(a_path: str, b_path: str) -> float:
    import torch

    a, b = torch.load(a_path), torch.load(b_path)
    if set(a) != set(b):
        raise AssertionError(f"different param names: {sorted(set(a) ^ set(b))[:5]}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _spec(mode: str, overrides: list[str], setting: dict[str, Any], out: Path) -> dict[str, Any]:
    return {
        "mode": mode,
        "overrides": overrides,
        "inner": setting["inner"],
        "pairs": setting["pairs"],
        "ablate_reps": setting.get("ablate_reps", 0),
        "params_out": str(out),
    }


def bench_setting(name: str, setting: dict[str, Any], threads: int, tmp: Path) -> dict[str, Any]:
    """Interleaved in-process pairs (timing) and one fresh process per loop (memory, timing)."""
    from fedfm.config import load_config, to_dict, to_toml

    overrides = with_eval_once(setting["overrides"])
    cfg = load_config(None, overrides)
    runs: list[dict[str, Any]] = []

    def launch(mode: str, label: str) -> dict[str, Any]:
        t = time.perf_counter()
        result = run_worker(SCRIPT, _spec(mode, overrides, setting, tmp / label), threads=threads)
        result["label"] = label
        runs.append(result)
        if mode == "both":
            detail = "fedfm/plain per pair " + ", ".join(
                f"{p['ratio']:.3f}" for p in result["pairs"]
            )
        else:
            detail = f"loop {result['loop_seconds_median']:.3f} s"
        print(
            f"  {label:>22}: {detail}; peak RSS {result['peak_rss_mb']:.0f} MiB; "
            f"test acc {result['test'].get('accuracy', float('nan')):.4f} "
            f"[{time.perf_counter() - t:.0f} s wall]",
            flush=True,
        )
        return result

    for i in range(setting["interleaved"]):
        launch("both", f"{name}-interleaved-{i}")
    singles: dict[str, list[dict[str, Any]]] = {"plain": [], "fedfm": []}
    for rep in range(setting["single"]):
        order = ("plain", "fedfm") if rep % 2 == 0 else ("fedfm", "plain")  # ABBA
        for mode in order:
            singles[mode].append(launch(mode, f"{name}-{mode}-process-{rep}"))

    files = [f for r in runs for f in r["params_files"].values()]
    diff = max(max_abs_diff(files[0], f) for f in files)
    interleaved = [p for r in runs if r["mode"] == "both" for p in r["pairs"]]
    single_ratios = [
        f["loop_seconds_median"] / p["loop_seconds_median"]
        for p, f in zip(singles["plain"], singles["fedfm"], strict=True)
    ]
    if interleaved:
        fedfm_s = median([p["fedfm"] for p in interleaved])
        plain_s = median([p["plain"] for p in interleaved])
        ratios, source = [p["ratio"] for p in interleaved], "interleaved in-process pairs"
    else:
        fedfm_s = median([r["loop_seconds_median"] for r in singles["fedfm"]])
        plain_s = median([r["loop_seconds_median"] for r in singles["plain"]])
        ratios, source = single_ratios, "fresh process per loop, ABBA order"
    fedfm_runs = [r for r in runs if r["mode"] in ("fedfm", "both")]
    summary = {
        "fedfm_seconds": fedfm_s,
        "plain_seconds": plain_s,
        "ratio_median": median(ratios),
        "ratios": ratios,
        "ratio_source": source,
        "ratio_separate_processes": single_ratios,
        "max_abs_param_diff": diff,
        "params_compared": len(files),
        "same_arithmetic": diff <= TOLERANCE,
        "fedfm_setup_seconds": median([r["setup_seconds"] for r in fedfm_runs]),
        "fedfm_rss_after_setup_mb": max(r["rss_after_setup_mb"] for r in singles["fedfm"]),
        "fedfm_peak_rss_mb": max(r["peak_rss_mb"] for r in singles["fedfm"]),
        "plain_peak_rss_mb": max(r["peak_rss_mb"] for r in singles["plain"]),
        "fedfm_test_accuracy": singles["fedfm"][0]["test"].get("accuracy"),
        "plain_test_accuracy": singles["plain"][0]["test"].get("accuracy"),
        "trainable_params": runs[0]["trainable_params"],
    }
    out: dict[str, Any] = {
        "overrides": overrides,
        "config": to_dict(cfg),
        "config_toml": to_toml(cfg),
        "plan": {k: v for k, v in setting.items() if k != "overrides"},
        "runs": [{k: v for k, v in r.items() if k != "params_files"} for r in runs],
        "summary": summary,
    }
    if setting["profile"]:
        print(f"  {name}: profile and ablation", flush=True)
        spec = _spec("profile", overrides, setting, tmp / f"{name}-profile")
        out["profile"] = run_worker(SCRIPT, spec, threads=threads)["profile"]
        spec = _spec("ablate", overrides, setting, tmp / f"{name}-ablate")
        out["ablation"] = run_worker(SCRIPT, spec, threads=threads)["ablation"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny version (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument(
        "--only", choices=sorted(SETTINGS), action="append", help="run only these settings"
    )
    parser.add_argument(
        "--single", type=int, default=-1, help="override the number of ABBA process repeats"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    settings = QUICK if args.quick else SETTINGS
    names = args.only or list(settings)
    report: dict[str, Any] = {
        "benchmark": "overhead",
        "command": " ".join([".venv/bin/python", "benchmarks/overhead.py", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": machine_info(args.threads),
        "timing": "round loop only (build_job excluded), perf_counter, median over repeats",
        "memory": "getrusage(RUSAGE_SELF).ru_maxrss of a fresh worker process per run",
        "settings": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedfm-overhead-") as tmp:
        for name in names:
            setting = dict(settings[name])
            if args.single >= 0:
                setting["single"] = max(1, args.single)
            print(
                f"[{name}] {setting['interleaved']} interleaving processes x {setting['pairs']} "
                f"pairs; {setting['single']} ABBA repeats of one process per loop",
                flush=True,
            )
            report["settings"][name] = bench_setting(name, setting, args.threads, Path(tmp))
    report["wall_seconds"] = time.perf_counter() - started
    check_fingerprint(report)
    # a partial run (--only) never overwrites the full results
    json_name = (
        "overhead.json" if set(names) == set(settings) else f"overhead-{'-'.join(names)}.json"
    )
    write_json(out_dir / json_name, report)
    for name, res in report["settings"].items():
        (out_dir / f"overhead.{name}.toml").write_text(res["config_toml"])
    print()
    print(table(report))
    for name, res in report["settings"].items():
        if "ablation" in res:
            print(f"\n{name}: where fedfm's extra time goes\n")
            print(attribution_table(res))
    print(f"\nwrote {out_dir / json_name} ({report['wall_seconds']:.0f} s)")
    ok = all(r["summary"]["same_arithmetic"] for r in report["settings"].values())
    if not ok:
        print(f"FAIL: final params differ by more than {TOLERANCE}", file=sys.stderr)
    return 0 if ok else 1


def table(report: dict[str, Any]) -> str:
    rows = []
    for name, res in report["settings"].items():
        s = res["summary"]
        rows.append(
            [
                name,
                s["fedfm_seconds"],
                s["plain_seconds"],
                f"{s['ratio_median']:.3f}" + (" ✓" if s["ratio_median"] <= GOAL else " ✗"),
                f"{min(s['ratios']):.3f}–{max(s['ratios']):.3f} (n={len(s['ratios'])})",
                f"{s['max_abs_param_diff']:.1e}",
                s["fedfm_setup_seconds"],
                f"{s['fedfm_peak_rss_mb']:.0f}",
                f"{s['plain_peak_rss_mb']:.0f}",
            ]
        )
    headers = [
        "setting",
        "fedfm s",
        "plain s",
        f"ratio (goal ≤ {GOAL})",
        "ratio range",
        "max |Δparams|",
        "fedfm setup s",
        "fedfm peak RSS MiB",
        "plain peak RSS MiB",
    ]
    return markdown_table(headers, rows)


def attribution_table(res: dict[str, Any]) -> str:
    """Ablation (same process, cycled) and profile shares of the fedfm loop."""
    ab = res["ablation"]
    rows = [[v, ab["seconds"][v], f"{ab['ratio_to_plain'][v]:.3f}"] for v in ab["seconds"]]
    text = markdown_table(["variant (same process, cycled)", "loop s", "ratio to plain"], rows)
    prof = res["profile"]["fedfm_functions"]
    skip = {"run_round", "fit_client", "train_locally"}
    rows = [
        [f"`{r['function']}` ({r['where']})", r["calls"], f"{100 * r['share_of_loop']:.1f}%"]
        for r in prof
        if r["function"] not in skip
    ][:10]
    text += "\n\n" + markdown_table(["fedfm function (cProfile)", "calls", "cum. share"], rows)
    text += (
        f"\n\ntime in fedfm's own Python lines (cProfile tottime): "
        f"{100 * res['profile']['fedfm_self_share']:.1f}% of the profiled loop; "
        + "; ".join(f"{k}: {v:.1f} µs/call" for k, v in ab["seed_cost_us"].items())
        + "\nmax |Δparams| plain vs fedfm by FedAvg float order: "
        + ", ".join(f"{k}: {v:.1e}" for k, v in ab["max_abs_diff_to_fedfm_by_fedavg_form"].items())
    )
    return text


if __name__ == "__main__":
    raise SystemExit(main())
