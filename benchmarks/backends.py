"""The backends against the in-process simulation: seconds and bytes per round.

* **grpc**: MiniLM + LoRA (r=8) on TREC-6, 3 clients, all 3 in every round. ``fedfm serve``
  with TLS on loopback and three ``fedfm join`` processes (one torch thread each) against
  ``fedfm run`` of the same config (one torch thread per core). Bytes: what fedfm accounts
  per round (``bytes_down`` + ``bytes_up``, the simulation's numbers) and what crossed the
  wire (the task and update payloads, from the server's ``events.jsonl``).
* **ray_mlp** and **ray_minilm**: 100 small clients on this machine's cores: ``backend =
  "ray"`` with one worker per core (one torch thread each) against in-process with one
  torch thread per core. ``ray_mlp``: digits + MLP, every client in every round (a client
  visit is about a millisecond: the backend's own cost shows). ``ray_minilm``: MiniLM + LoRA
  on TREC-6, 2,000 examples over 100 clients (20 each, one step), 25 clients per round.

Every run is a fresh process (or set of processes), interleaved in ABBA order (in-process,
backend, backend, in-process); seconds per round come from each run's ``metrics.jsonl``
(the round loop only), setup (loading, Ray start, workers, clients joining) is the rest of
the wall time. Ratios are backend / in-process within one pair.

    .venv/bin/python benchmarks/backends.py [--quick] [--only grpc|ray_mlp|ray_minilm] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    check_fingerprint,
    machine_info,
    markdown_table,
    median,
    offline_env,
    write_json,
)

from fedfm.config import load_config, to_toml  # noqa: E402

CLIENTS = ["c0", "c1", "c2"]
SETTINGS: dict[str, list[str]] = {
    "grpc": [
        "data.num_clients=3",
        "strategy.clients_per_round=3",
        "data.partition=iid",
        "data.max_train_examples=1200",
        "rounds=3",
        f"remote.clients={json.dumps(CLIENTS)}",
    ],
    "ray_mlp": [
        "data.dataset=digits",
        "model.name=mlp",
        "adapter.method=full",
        "data.num_clients=100",
        "data.partition=iid",
        "data.min_client_size=5",
        "strategy.clients_per_round=100",
        "client.lr=0.01",
        "rounds=5",
    ],
    "ray_minilm": [
        "data.num_clients=100",
        "data.partition=iid",
        "data.min_client_size=5",
        "data.max_train_examples=2000",
        "strategy.clients_per_round=25",
        "rounds=3",
    ],
}
QUICK = {
    "grpc": ["data.max_train_examples=150", "rounds=2"],
    "ray_mlp": ["rounds=2"],
    "ray_minilm": ["data.max_train_examples=600", "data.num_clients=30", "rounds=1"],
}
COMMON = ["eval.every=1000", "checkpoint.every=0"]  # evaluate once, at the last round


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedfm.cli", *args]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], log: str) -> None:
    if proc.returncode != 0:
        sys.stderr.write(log[-4000:])
        raise RuntimeError(f"{proc.args} failed (rc {proc.returncode})")


def run_arm(setting: str, backend: str, overrides: list[str], tmp: Path, n: int) -> dict:
    """One run of ``setting`` on ``backend`` (inproc | grpc | ray); its timings and bytes."""
    name = f"{setting}-{backend}-{n}"
    config = tmp / f"{name}.toml"
    extra = [f"name={name}", f"output_dir={tmp / 'runs'}"]
    cores = len(os.sched_getaffinity(0))
    if backend == "ray":
        extra += ["backend=ray", f"ray.workers={cores}", "ray.threads=1"]
    if backend == "grpc":
        extra += [f"remote.address=localhost:{_port()}", f"remote.tls_dir={tmp / 'tls'}"]
    cfg = load_config(None, [*overrides, *extra])
    config.write_text(to_toml(cfg))
    run_dir = tmp / "runs" / name
    start = time.perf_counter()
    if backend == "grpc":
        server = subprocess.Popen(
            _cli("serve", str(config)),
            env=offline_env(1),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        joins = [
            subprocess.Popen(
                _cli(
                    "join",
                    "--server",
                    cfg.remote.address,
                    "--credentials",
                    str(tmp / f"{cid}.json"),
                    "--ca",
                    str(tmp / "tls" / "ca.pem"),
                ),
                env=offline_env(1),
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for cid in CLIENTS
        ]
        out = server.communicate()[0]
        _check(server, out)
        for j in joins:
            _check(j, j.communicate()[0])
    else:
        threads = 1 if backend == "ray" else cores
        proc = subprocess.run(
            _cli("run", str(config)), env=offline_env(threads), text=True, capture_output=True
        )
        _check(proc, proc.stdout + proc.stderr)
    wall = time.perf_counter() - start
    records = _rounds(run_dir)
    rounds_s = sum(r["seconds"] for r in records)
    arm = {
        "backend": backend,
        "wall_s": wall,
        "rounds": len(records),
        "s_per_round": rounds_s / len(records),
        "setup_s": wall - rounds_s,
        "accounted_bytes_per_round": sum(r["bytes_down"] + r["bytes_up"] for r in records)
        / len(records),
        "test_accuracy": records[-1]["test_accuracy"],
        "config": str(config.name),
    }
    if backend == "grpc":
        events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
        wire = sum(e["bytes"] for e in events if e["event"] in ("task", "update"))
        arm["wire_bytes_per_round"] = wire / len(records)
    return arm


def measure(setting: str, quick: bool, tmp: Path, configs: Path) -> dict[str, Any]:
    other = "grpc" if setting == "grpc" else "ray"
    overrides = [*SETTINGS[setting], *COMMON, *(QUICK[setting] if quick else [])]
    order = ["inproc", other, other, "inproc"]
    arms = [run_arm(setting, b, overrides, tmp, n) for n, b in enumerate(order)]
    for arm in arms:  # the resolved configs, next to the results
        (configs / f"{arm['config']}").write_text((tmp / arm["config"]).read_text())
    pairs = [(arms[0], arms[1]), (arms[3], arms[2])]
    result = {
        "overrides": overrides,
        "arms": arms,
        "round_ratio": [b["s_per_round"] / a["s_per_round"] for a, b in pairs],
        "wall_ratio": [b["wall_s"] / a["wall_s"] for a, b in pairs],
    }
    print(json.dumps({setting: result}, indent=1, default=str), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=list(SETTINGS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    name = "backends" + (f"-{args.only}" if args.only else "")
    configs = out / f"{name}_configs"
    configs.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine_info(1), "quick": args.quick, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="fedfm-backends-") as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run(_cli("admin", "init-tls", str(tmp / "tls")), check=True, capture_output=True)
        for cid in CLIENTS:
            subprocess.run(
                _cli(
                    "admin",
                    "add-client",
                    str(tmp / "tls"),
                    "--id",
                    cid,
                    "--out",
                    str(tmp / f"{cid}.json"),
                ),
                check=True,
                capture_output=True,
            )
        for setting in [args.only] if args.only else list(SETTINGS):
            report["settings"][setting] = measure(setting, args.quick, tmp, configs)
    check_fingerprint(report)
    write_json(out / f"{name}.json", report)
    rows = []
    for setting, res in report["settings"].items():
        for a in res["arms"]:
            rows.append(
                [
                    setting,
                    a["backend"],
                    a["s_per_round"],
                    a["setup_s"],
                    a["accounted_bytes_per_round"],
                    a.get("wire_bytes_per_round", ""),
                    a["test_accuracy"],
                ]
            )
        rows.append([setting, "ratio (pairs)", median(res["round_ratio"]), "", "", "", ""])
    print(
        markdown_table(
            [
                "setting",
                "backend",
                "s/round",
                "setup s",
                "accounted B/round",
                "wire B/round",
                "acc",
            ],
            rows,
        )
    )
    print(f"wrote {out / (name + '.json')}")


if __name__ == "__main__":
    main()
