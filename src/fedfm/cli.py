"""The ``fedfm`` command line.

fedfm run [CONFIG.toml] [--set key=value ...] [--overwrite]   run a federated job
fedfm run --resume runs/<name> [--set rounds=N]               continue from its checkpoint
fedfm report RUN [RUN ...] [--out DIR]                        overlay runs: plot + table
fedfm data stats [CONFIG.toml] [--set ...] [--plot FILE]      clients, labels, heterogeneity
fedfm synth [CONFIG.toml] [--set ...] [--out FILE]            write a synthetic dataset (cached)
fedfm serve CONFIG.toml [--set ...] [--resume]                serve the job to remote clients
fedfm join --server HOST:PORT --credentials FILE [--ca ...]   a remote client: train when asked
fedfm admin init-tls DIR [--host H ...]                       a private CA and a server certificate
fedfm admin add-client DIR --id ID --out FILE [--cert]        issue a client's credentials
fedfm export RUN --merged DIR [--overwrite]                   the run's model as one HF folder
fedfm eval RUN [--data FILE] [--set ...] [--out FILE]         score a finished run again
fedfm exp NAME [--quick] [--only GLOB]                        run an experiment, write its report
fedfm list                                                    what is registered
fedfm transfer pft [CONFIG.toml] [--set ...] [--overwrite]    one-shot FedPFT vs its references
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedfm.errors import FedFMError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cmd_run(args: argparse.Namespace, console: Console) -> None:
    # the config, names, paths and run folder are checked before torch is imported
    from fedfm.config import load_config
    from fedfm.runtime.preflight import preflight
    from fedfm.runtime.run_folder import new_run_dir, resume_config, resumed_run

    if args.resume:
        if args.config:
            raise FedFMError("give either a CONFIG or --resume RUN, not both")
        run_dir = Path(args.resume)
        cfg = resume_config(run_dir, args.set)
        preflight(cfg, run_dir=run_dir)
        from fedfm.runtime.run import execute

        with resumed_run(run_dir):
            execute(cfg, run_dir=run_dir, resume=True, console=console)
        return
    cfg = load_config(args.config, args.set)
    preflight(cfg, run_dir=Path(cfg.output_dir) / cfg.run_name)
    from fedfm.runtime.run import execute

    with new_run_dir(cfg, overwrite=args.overwrite) as run_dir:
        execute(cfg, run_dir=run_dir, console=console)


def _cmd_report(args: argparse.Namespace, console: Console) -> None:
    from fedfm.report.compare import compare_runs

    out = Path(args.out) if args.out else Path(args.runs[0]).parent
    png, md = compare_runs([Path(r) for r in args.runs], out)
    # as plain text: rich would read "![learning curves](…)" as markup and drop it
    console.print(md.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {png} and {md}", soft_wrap=True)


def _cmd_data_stats(args: argparse.Namespace, console: Console) -> None:
    from fedfm.config import load_config
    from fedfm.data.federation import build_federation, subsample
    from fedfm.data.load import load_data
    from fedfm.data.stats import plot_stats, stats_summary, stats_table, summarize

    cfg = load_config(args.config, args.set)
    dataset = load_data(cfg.data)
    train = subsample(dataset.train, cfg.data.max_train_examples, seed=cfg.seed)
    federation = build_federation(train, cfg.data, seed=cfg.seed)
    parts = [c.train for c in federation.clients]
    stats = summarize(
        parts, train.labels, dataset.label_names, client_names=[c.name for c in federation.clients]
    )
    console.print(stats_table(stats))
    console.print(stats_summary(stats))
    plot = Path(args.plot or f"{dataset.name}-{cfg.data.partition}-stats.png")
    plot_stats(stats, plot)
    console.print(f"plot → {plot}")


def _cmd_synth(args: argparse.Namespace, console: Console) -> None:
    from fedfm.config import load_config
    from fedfm.synthetic.build import synthesize
    from fedfm.synthetic.dataset import write_set

    cfg = load_config(args.config, args.set)
    synthetic = synthesize(cfg, console=console, regenerate=args.regenerate)
    meta = synthetic.meta
    table = Table(title=f"synthetic set: {len(synthetic)} of {meta.get('generated', '?')} kept")
    table.add_column("filter")
    table.add_column("removed", justify="right")
    for name, count in meta.get("removed", {}).items():
        table.add_row(name, str(count))
    console.print(table)
    lines = []
    if "label_agreement" in meta:
        lines.append(
            f"label agreement (probe, out of fold) {meta['label_agreement']:.1%} · relabelled "
            f"{meta['relabelled']} · per label {meta['per_label']}"
        )
    if cont := meta.get("contamination"):
        lines.append(
            f"contamination: {cont['shared_ngram']} share a {cont['ngram']}-gram with the "
            f"{cont['test_examples']} test texts, {cont['too_similar']} have cosine >= "
            f"{cont['similarity_threshold']} to one (nearest: mean "
            f"{cont['nearest_similarity_mean']:.3f}, max {cont['nearest_similarity_max']:.3f})"
        )
    if rate := meta.get("samples_per_second"):
        lines.append(f"generation: {meta['generation_seconds']:.1f} s, {rate:.2f} samples/s")
    console.print("\n".join(lines), highlight=False)
    if args.out:
        out = Path(args.out)
        write_set(out, synthetic.rows, {k: v for k, v in meta.items() if k != "format"})
        console.print(f"wrote {out} and {out.name}.meta.json (use it with synthetic.path)")
    else:
        console.print(f"set: {synthetic.path}")


def _cmd_serve(args: argparse.Namespace, console: Console) -> None:
    from fedfm.config import load_config
    from fedfm.runtime.remote.server import check_remote
    from fedfm.runtime.run import execute
    from fedfm.runtime.run_folder import new_run_dir, resume_config, resumed_run

    cfg = load_config(args.config, args.set)
    check_remote(cfg)
    if args.resume:
        run_dir = Path(cfg.output_dir) / cfg.run_name
        cfg = resume_config(run_dir, args.set)
        with resumed_run(run_dir):
            execute(cfg, run_dir=run_dir, resume=True, console=console, backend="remote")
        return
    with new_run_dir(cfg, overwrite=args.overwrite) as run_dir:
        execute(cfg, run_dir=run_dir, console=console, backend="remote")


def _cmd_join(args: argparse.Namespace, console: Console) -> None:
    from fedfm.resources.models import cache_root
    from fedfm.runtime.remote.client import Connection, join
    from fedfm.runtime.remote.security import read_credentials

    if args.credentials:
        client_id, token = read_credentials(args.credentials)
    elif args.id and args.insecure:
        client_id, token = args.id, ""
    else:
        raise FedFMError("give --credentials FILE (from `fedfm admin add-client`)")
    if not args.insecure and not args.ca:
        raise FedFMError("give --ca ca.pem (the server's CA), or --insecure on loopback")

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    conn = Connection(
        args.server, client_id, token, read(args.ca), read(args.cert), read(args.key), args.insecure
    )
    state_dir = (
        None if args.state_dir == "none" else Path(args.state_dir or cache_root() / "clients")
    )
    done = join(
        conn,
        data=args.data,
        partition=args.partition,
        console=console,
        state_dir=state_dir,
        model=args.model,
    )
    console.print(f"done: {done['rounds']} rounds on {done['examples']} examples")


def _cmd_admin(args: argparse.Namespace, console: Console) -> None:
    from fedfm.runtime.remote.security import add_client, client_certificate, make_tls

    folder = Path(args.dir)
    if args.admin_command == "init-tls":
        files = make_tls(folder, args.host or ("localhost", "127.0.0.1"))
        console.print(
            f"wrote {files.ca_cert} (give it to the clients), {files.server_cert} and "
            f"{files.server_key} (keep it private) for {', '.join(args.host or ['localhost'])}"
        )
        return
    add_client(folder, args.id, args.out)
    console.print(f"issued credentials for {args.id!r} → {args.out} (hand it to that client only)")
    if args.cert:
        cert, key = client_certificate(folder, args.id)
        console.print(f"mutual TLS: {cert} and {key}")


def _cmd_export(args: argparse.Namespace, console: Console) -> None:
    from fedfm.run_files import check_can_export

    check_can_export(Path(args.run), Path(args.merged), overwrite=args.overwrite)  # no torch yet
    from fedfm.models.export import export_merged

    with console.status("merging the adapter into the base model ..."):
        out = export_merged(args.run, args.merged, overwrite=args.overwrite)
    console.print(f"wrote {out} (a standalone Hugging Face model folder)", soft_wrap=True)


def _cmd_eval(args: argparse.Namespace, console: Console) -> None:
    from fedfm.run_files import check_can_score

    check_can_score(Path(args.run))  # before torch is imported
    from fedfm.runtime.rescore import default_result_path, rescore_run, write_result

    with console.status("loading the run's model and data ..."):
        result = rescore_run(args.run, data=args.data, overrides=args.set)
    metrics = "  ".join(  # scalars; per-class lists are in the JSON
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in result["metrics"].items()
        if isinstance(v, (int, float))
    )
    console.print(
        f"{result['dataset']}: {result['examples']} examples  {metrics}",
        soft_wrap=True,
        highlight=False,
    )
    out = write_result(result, args.out or default_result_path(args.run, args.data))
    console.print(f"wrote {out}", soft_wrap=True)


def _cmd_exp(args: argparse.Namespace, console: Console) -> None:
    from fedfm.experiments import EXPERIMENTS, run_experiment

    if args.name is None:
        for name in EXPERIMENTS.names():
            console.print(f"[bold]{name}[/]: {EXPERIMENTS.get(name).title}")
        return
    run_experiment(
        args.name,
        quick=args.quick,
        out_dir=Path(args.out) if args.out else None,
        runs_dir=Path(args.runs) if args.runs else None,
        only=args.only,
        remeasure=args.remeasure,
        console=console,
    )


def _cmd_transfer_pft(args: argparse.Namespace, console: Console) -> None:
    from fedfm.config import load_config

    cfg = load_config(args.config, args.set)
    from fedfm.transfer.run_pft import pft_run_name, run_pft

    run_dir = Path(cfg.output_dir) / pft_run_name(cfg)
    if run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
        raise FedFMError(f"{run_dir} exists and is not empty: pass --overwrite or set name=...")
    with console.status("embedding, fitting the mixtures, training the heads ..."):
        summary = run_pft(cfg, run_dir)
    acc, sent = summary["accuracy"], summary["bytes"]
    console.print(
        f"accuracy: pft {acc['pft']:.4f}  centralized {acc['centralized']:.4f}  fedavg "
        f"{acc['fedavg']:.4f}\nbytes: pft {sent['pft_up']:,} (one upload per client)  fedavg "
        f"{sent['fedavg']:,} ({cfg.pft.fedavg_rounds} rounds)\nwrote {run_dir}",
        highlight=False,
        soft_wrap=True,
    )


def _cmd_list(args: argparse.Namespace, console: Console) -> None:
    from fedfm.data.partition import PARTITIONS
    from fedfm.datasets import DATASETS
    from fedfm.resources.models import MODELS
    from fedfm.strategies import STRATEGIES

    for title, registry in (
        ("datasets", DATASETS),
        ("models", MODELS),
        ("partitions", PARTITIONS),
        ("strategies", STRATEGIES),
    ):
        console.print(f"[bold]{title}[/]: {', '.join(registry.names())}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedfm", description="Federated learning for and with foundation models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a federated job (the default job without CONFIG)")
    run.add_argument("config", nargs="?", help="TOML config; omit for the default job")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set strategy.name=fedprox (repeatable)",
    )
    run.add_argument("--resume", metavar="RUN_DIR", help="continue runs/<name> from its checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="overlay runs: comparison.png and comparison.md")
    report.add_argument("runs", nargs="+", help="run folders")
    report.add_argument("--out", help="output folder (default: the first run's parent)")
    report.set_defaults(func=_cmd_report)

    data = sub.add_parser("data", help="inspect datasets and partitions")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="per-client sizes, label histograms, heterogeneity")
    stats.add_argument("config", nargs="?", help="TOML config; omit for the default job's data")
    stats.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    stats.add_argument("--plot", help="where to save the plot (PNG)")
    stats.set_defaults(func=_cmd_data_stats)

    synth = sub.add_parser("synth", help="generate, filter and cache a synthetic dataset")
    synth.add_argument("config", nargs="?", help="TOML config ([data] and [synthetic])")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    synth.add_argument("--out", help="also write the set (JSONL + .meta.json) here")
    synth.add_argument(
        "--regenerate", action="store_true", help="generate again even if a cached set matches"
    )
    synth.set_defaults(func=_cmd_synth)

    serve = sub.add_parser("serve", help="serve a federated job to remote clients over gRPC")
    serve.add_argument("config", help="TOML config with a [remote] section")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    serve.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    serve.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    serve.set_defaults(func=_cmd_serve)

    join_ = sub.add_parser("join", help="run a remote client of a fedfm serve job")
    join_.add_argument("--server", required=True, metavar="HOST:PORT")
    join_.add_argument("--credentials", help="file from `fedfm admin add-client`")
    join_.add_argument("--id", help="client id (only with --insecure and no credentials)")
    join_.add_argument("--ca", help="the server's ca.pem")
    join_.add_argument("--cert", help="client certificate (mutual TLS)")
    join_.add_argument("--key", help="client key (mutual TLS)")
    join_.add_argument("--insecure", action="store_true", help="plaintext (loopback tests only)")
    join_.add_argument(
        "--data",
        help="your own data, in any form data.dataset takes (CSV, TSV, JSONL, JSON, Parquet, "
        "text file, save_to_disk folder), with the columns the server's config names",
    )
    join_.add_argument("--partition", type=int, help="registry partition to use (default: yours)")
    join_.add_argument(
        "--model", help="your copy of the server's model folder, if not at its model.name path"
    )
    join_.add_argument(
        "--state-dir",
        help="where the client keeps its own states between rounds, so a restart loses none "
        "(default: $FEDFM_CACHE/clients; none: in memory only)",
    )
    join_.set_defaults(func=_cmd_join)

    admin = sub.add_parser("admin", help="TLS material and client credentials for fedfm serve")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    tls = admin_sub.add_parser("init-tls", help="a private CA and a server certificate")
    tls.add_argument("dir", help="folder for ca.pem, ca.key, server.pem, server.key")
    tls.add_argument(
        "--host", action="append", help="server host name or IP (repeatable; default localhost)"
    )
    tls.set_defaults(func=_cmd_admin)
    add = admin_sub.add_parser("add-client", help="issue a client's credentials file")
    add.add_argument("dir", help="the server's folder (clients.json keeps token hashes)")
    add.add_argument("--id", required=True, help="the client's id")
    add.add_argument("--out", required=True, help="credentials file to hand to the client")
    add.add_argument("--cert", action="store_true", help="also a client certificate (mutual TLS)")
    add.set_defaults(func=_cmd_admin)

    export = sub.add_parser("export", help="write a run's model as a standalone HF folder")
    export.add_argument("run", help="a finished run folder")
    export.add_argument(
        "--merged", required=True, metavar="DIR", help="the adapter merged into the base model"
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    export.set_defaults(func=_cmd_export)

    eval_ = sub.add_parser("eval", help="score a finished run on its test set or new data")
    eval_.add_argument("run", help="a finished run folder")
    eval_.add_argument(
        "--data",
        metavar="FILE",
        help="score on this data instead (data.dataset): a file is scored whole, every row; "
        "a registry name by its test split",
    )
    eval_.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    eval_.add_argument("--out", help="where to write the metrics (default RUN/eval*.json)")
    eval_.set_defaults(func=_cmd_eval)

    exp = sub.add_parser("exp", help="run an experiment and write its report (no NAME: list)")
    exp.add_argument("name", nargs="?", help="experiment name; omit to list them")
    exp.add_argument("--quick", action="store_true", help="a tiny version (smoke test)")
    exp.add_argument("--out", help="report folder (default experiments/NAME; quick: runs/...)")
    exp.add_argument("--runs", help="where the arms' run folders go")
    exp.add_argument("--only", metavar="GLOB", help="run only the arms matching GLOB, no report")
    exp.add_argument(
        "--remeasure", action="store_true", help="redo the measurements even if cached"
    )
    exp.set_defaults(func=_cmd_exp)

    transfer = sub.add_parser("transfer", help="FM-to-small-model transfer (one-shot FedPFT)")
    transfer_sub = transfer.add_subparsers(dest="transfer_command", required=True)
    pft = transfer_sub.add_parser(
        "pft", help="FedPFT: per-class Gaussian mixtures of frozen FM features, one shot"
    )
    pft.add_argument("config", nargs="?", help="TOML config ([data] and [pft])")
    pft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pft.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    pft.set_defaults(func=_cmd_transfer_pft)

    lst = sub.add_parser("list", help="registered datasets, models, partitions and strategies")
    lst.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        args.func(args, console)
    except FedFMError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as err:  # `fedfm run` and `serve` say what to do next
        console.print(f"interrupted: {err}" if str(err) else "interrupted", highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
