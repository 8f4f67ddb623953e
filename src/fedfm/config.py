"""Run configuration: frozen dataclasses, TOML loading and ``--set`` overrides.

A config is a TOML file whose tables mirror the dataclasses below. Every key is optional
(defaults give the default job: MiniLM + LoRA on TREC-6, 10 Dirichlet(0.5) clients, FedAvg).
An unknown key is an error naming the key and the closest valid one; every value is type
checked and range checked, and all problems are reported at once.

Example:
    >>> cfg = load_config(None, ["strategy.name=fedadam", "rounds=3"])
    >>> cfg.strategy.name, cfg.rounds
    ('fedadam', 3)
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedfm.errors import ConfigError, closest


@dataclass(frozen=True)
class DataConfig:
    # registry name (trec6 | sentiment4 | sms_spam | shakespeare | digits) or a path: a .csv,
    # .tsv, .jsonl, .json or .parquet file, or a folder from datasets' save_to_disk
    dataset: str = "trec6"
    partition: str = "dirichlet"  # iid | dirichlet | shards | quantity | natural
    num_clients: int = 10  # natural: 0 = one client per group
    alpha: float = 0.5  # Dirichlet concentration (dirichlet: label skew; quantity: size skew)
    shards_per_client: int = 2  # shards: labels per client (pathological non-IID)
    min_client_size: int = 8  # every client gets at least this many training examples
    client_eval_fraction: float = 0.1  # share of each client's data held out for client eval
    max_length: int = 64  # tokens per example (truncation); batches are padded per batch
    max_train_examples: int = 0  # 0 = all; >0 = seeded subsample of the training pool
    max_test_examples: int = 0  # 0 = all; >0 = seeded subsample of the global test set
    # the keys below read a dataset file (data.dataset = a path); the registry's ignore them
    task: str = "auto"  # classification | causal_lm | auto: classification if label_column exists
    text_column: str = "text"  # the text (causal LM: the document to model)
    text_pair_column: str = ""  # a second text per row, encoded as a pair (NLI, QA); "" = none
    label_column: str = "label"  # class names or integer ids
    label_names: tuple[str, ...] = ()  # class names in id order; () = ClassLabel's, else sorted
    group_column: str = ""  # a client or owner id per row: partition = "natural" uses it
    split_column: str = ""  # "train" or "test" per row; "" = a seeded, stratified 20% test set


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm"  # registry name (minilm | smollm2-135m | mlp) or an HF model folder
    pretrained: bool = True  # false = same architecture, random init (baseline)
    dtype: str = "float32"  # backbone dtype: float32 | bfloat16 | float16
    trust_remote_code: bool = False  # let a model folder run its own Python code


@dataclass(frozen=True)
class AdapterConfig:
    method: str = "lora"  # lora | ia3 | bitfit (biases) | head (linear probe) | full
    rank: int = 8  # LoRA rank r
    alpha: float = 16.0  # LoRA scaling alpha (scale = alpha / rank)
    dropout: float = 0.0  # LoRA dropout
    target_modules: tuple[str, ...] = ()  # empty = per-architecture default
    freeze_a: bool = False  # LoRA: A stays at its shared init; only B trains and travels (FFA)


@dataclass(frozen=True)
class ClientConfig:
    epochs: int = 1  # local epochs over the client's data
    steps: int = 0  # >0: exactly this many local steps instead of epochs
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 5e-3
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no gradient clipping
    # classification loss: balanced (each client's label prior added to the logits in
    # training: balanced softmax, against label skew) | ce (plain cross-entropy)
    loss: str = "balanced"


@dataclass(frozen=True)
class StrategyConfig:
    # fedavg | fedprox | fedavgm | fedadam | fedyogi | fedadagrad | scaffold;
    # references: local (each client alone) | centralized (pooled data)
    name: str = "fedavg"
    fraction: float = 0.5  # share of clients per round (used when clients_per_round = 0)
    clients_per_round: int = 0  # >0 overrides fraction
    proximal_mu: float = 0.01  # fedprox: weight of (mu/2)||w - w_global||^2
    server_lr: float = 1.0  # server step size (fedavgm, fedopt, scaffold)
    server_momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam / fedyogi / fedadagrad first moment
    beta2: float = 0.99  # fedadam / fedyogi second moment
    tau: float = 1e-3  # fedopt adaptivity (epsilon)
    # flora: true = re-project the exact mean of LoRA products to adapter.rank by SVD;
    # false = merge it into the frozen weights exactly and restart LoRA from (A0, 0)
    reproject: bool = True
    # params each client keeps to itself (personalisation): name fragments such as
    # "lora_B" (FedSA-LoRA) or "head" (the task head, FedPer-style); [] = all shared
    personal: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompressionConfig:
    method: str = "none"  # what clients upload: none | quantize (stochastic b-bit) | topk
    bits: int = 8  # quantize: bits per value (1, 2, 4 or 8)
    fraction: float = 0.1  # topk: share of each tensor's entries kept
    error_feedback: bool = True  # carry what compression lost into the client's next upload


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg, McMahan et al., 2018)."""

    noise: str = "none"  # none | central (the server adds it) | distributed (clients add shares)
    clip: float = 1.0  # L2 bound on each client's update (the start value when adaptive)
    adaptive_clip: bool = False  # track a quantile of update norms (Andrew et al., 2021)
    target_quantile: float = 0.5  # adaptive: share of updates left unclipped
    clip_lr: float = 0.2  # adaptive: geometric step of the clip norm
    count_noise: float = 0.0  # adaptive: stddev of the unclipped count's noise; 0 = cohort / 20
    noise_multiplier: float = 0.0  # noise stddev / clip; 0 = the least that meets target_epsilon
    target_epsilon: float = 0.0  # the run's privacy budget at delta; 0 = no budget
    delta: float = 1e-5
    accountant: str = "rdp"  # rdp | prv (Opacus' accountants)
    over_budget: str = "refuse"  # refuse to start | stop after the last round the budget allows


@dataclass(frozen=True)
class DPSGDConfig:
    """Sample-level differential privacy: DP-SGD in every client's local trainer (Opacus)."""

    enabled: bool = False
    noise_multiplier: float = 1.0  # noise stddev / max_grad_norm
    max_grad_norm: float = 1.0  # per-example gradient L2 bound
    delta: float = 1e-5
    accountant: str = "rdp"  # rdp | prv


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (SecAgg, Bonawitz et al., 2017): the server learns only the sum."""

    enabled: bool = False
    threshold: float = 0.67  # share of the cohort whose secret shares rebuild a key (Shamir t)
    clip: float = 1.0  # every coordinate is clamped to [-clip, clip] before fixed-point encoding
    dropout: float = 0.0  # share of the cohort that drops after sharing keys (simulated)


@dataclass(frozen=True)
class RobustConfig:
    """Byzantine-robust aggregation: replaces the weighted mean of client deltas."""

    aggregator: str = "mean"  # mean | median | trimmed_mean | krum | multikrum
    trim: float = 0.1  # trimmed_mean: share of values cut at each end of every coordinate
    byzantine: int = 0  # krum / multikrum: attackers tolerated (f); 0 = 30% of the cohort
    keep: int = 0  # multikrum: updates averaged; 0 = cohort - f
    norm_bound: float = 0.0  # > 0: scale each update to at most this L2 norm first


@dataclass(frozen=True)
class AttackConfig:
    """Simulated malicious clients (a seeded, fixed set for the whole run)."""

    kind: str = "none"  # none | label_flip | sign_flip | scale | noise | backdoor
    fraction: float = 0.0  # share of clients that are malicious
    scale: float = 10.0  # scale: factor on the update (model replacement); sign_flip: -scale
    noise_std: float = 0.1  # noise: the update is replaced by N(0, noise_std^2)
    trigger: str = "cf mn bb"  # backdoor: phrase put in front of the text
    target_label: int = 0  # backdoor: the label the trigger maps to
    poison_fraction: float = 0.5  # backdoor: share of a malicious client's examples poisoned


@dataclass(frozen=True)
class SyntheticConfig:
    """Labelled examples written by a generative FM, and how the federation uses them."""

    mode: str = "none"  # none | server_warmup | client_mix | synthetic_only
    size: int = 300  # examples to generate (labels balanced), before the filters
    ratio: float = 1.0  # client_mix: synthetic examples added per real example of a client
    warmup_epochs: int = 2  # server_warmup: passes over the synthetic set before round 1
    path: str = ""  # use this synthetic JSONL (from `fedfm synth --out`) instead of generating
    descriptions: tuple[str, ...] = ()  # one per label; empty = built-in for bundled datasets
    seed_file: str = ""  # JSONL of public seed examples {"text", "label"} shown in prompts
    examples_per_prompt: int = 3  # seed (or built-in) examples listed in each prompt
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 40
    batch_size: int = 32  # prompts sampled together
    seed: int = 0  # generation seed (topics, seed examples, sampling)
    min_words: int = 3  # length filter
    max_words: int = 60
    near_duplicate: float = 0.95  # MiniLM cosine at which a later sample is a near-copy
    min_confidence: float = 0.3  # label filter: the probe's least p(intended label)
    relabel: bool = False  # label filter: relabel a confident disagreement instead of dropping
    contamination_ngram: int = 8  # a shared word n-gram with the test set flags a sample
    contamination_similarity: float = 0.9  # so does a test example this close (cosine)


@dataclass(frozen=True)
class RemoteConfig:
    """``fedfm serve``: remote clients over gRPC (ignored by the simulator)."""

    address: str = "localhost:50051"  # where the server listens
    clients: tuple[str, ...] = ()  # client ids in federation order (client i holds partition i)
    deadline: float = 600.0  # seconds a round waits for its cohort before closing on a quorum
    quorum: float = 1.0  # share of the cohort whose updates a round needs to close
    tls_dir: str = ""  # from `fedfm admin init-tls`: ca.pem, server.pem, server.key, clients.json
    mutual_tls: bool = False  # also require a client certificate signed by the CA
    insecure: bool = False  # plaintext on loopback (tests); never across machines
    max_update_mb: float = 1024.0  # the largest update accepted
    max_inflight_mb: float = 2048.0  # updates buffered at once, all clients together
    max_examples: int = 1_000_000  # the largest num_examples (FedAvg weight) an update may claim
    stream_timeout: float = 30.0  # seconds a stream may stall before the server cuts it
    patience: int = 1  # more deadlines a round below the quorum waits, then takes what arrived


@dataclass(frozen=True)
class RayConfig:
    """``backend = "ray"``: the simulation's clients train on Ray actors (one backbone each)."""

    address: str = ""  # "" = start a local Ray; "auto" or "ray://HOST:10001" = join a cluster
    workers: int = 0  # actors, each with its own copy of the model; 0 = one per CPU Ray offers
    cpus_per_worker: float = 1.0  # CPUs Ray reserves for each actor
    threads: int = 0  # torch threads in each actor; 0 = cpus_per_worker (at least 1)


@dataclass(frozen=True)
class SystemConfig:
    """Resource profiles: what each simulated client can do (drawn per client, seeded)."""

    ranks: tuple[int, ...] = ()  # LoRA rank per client, drawn from this list; [] = adapter.rank
    speeds: tuple[float, ...] = ()  # relative compute speed per client (1.0 = reference)
    layers: tuple[int, ...] = ()  # top transformer layers whose adapters a client trains; [] = all
    steps: tuple[int, ...] = ()  # local steps per round per client; [] = client.epochs/steps
    deadline: float = 0.0  # per-round budget in local steps at speed 1.0; 0 = no deadline
    late: str = "drop"  # a client that misses the deadline: drop | partial (its steps so far)
    min_rank: int = 0  # clients of lower rank are left out of every round (a baseline)


@dataclass(frozen=True)
class EvalConfig:
    every: int = 1  # evaluate the global model every k rounds (and always at the last)
    per_client: bool = False  # also evaluate on every client's held-out split
    initial: bool = False  # also evaluate before round 1 (recorded as round 0)
    batch_size: int = 256


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1  # write an atomic checkpoint every k rounds (0 = never)


@dataclass(frozen=True)
class RunConfig:
    name: str = ""  # run folder name under output_dir; empty = derived from the config
    seed: int = 0
    rounds: int = 8
    output_dir: str = "runs"
    backend: str = "simulation"
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    dpsgd: DPSGDConfig = field(default_factory=DPSGDConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        problems = _range_problems(self)
        if problems:
            raise _invalid(problems)

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return (
            f"{_stem(self.data.dataset)}-{_stem(self.model.name)}-{self.adapter.method}"
            f"-{self.strategy.name}-{self.data.partition}-s{self.seed}"
        )


def _stem(name: str) -> str:
    """A registry name as is; a model or dataset path by its last component (run names)."""
    return Path(name.rstrip("/\\")).name or name


# ---------------------------------------------------------------- validation of values


def _invalid(problems: list[str]) -> ConfigError:
    err = ConfigError("invalid config:\n  " + "\n  ".join(problems))
    err.problems = list(problems)
    return err


_POSITIVE = {
    "rounds",
    "synthetic.size",
    "synthetic.warmup_epochs",
    "synthetic.max_new_tokens",
    "synthetic.batch_size",
    "synthetic.min_words",
    "synthetic.max_words",
    "synthetic.contamination_ngram",
    "data.min_client_size",
    "data.max_length",
    "data.shards_per_client",
    "adapter.rank",
    "client.batch_size",
    "eval.batch_size",
    "eval.every",
    "remote.max_examples",
}
_NON_NEGATIVE = {
    "data.num_clients",
    "data.max_train_examples",
    "data.max_test_examples",
    "client.steps",
    "client.epochs",
    "client.weight_decay",
    "client.max_grad_norm",
    "client.momentum",
    "strategy.clients_per_round",
    "strategy.proximal_mu",
    "checkpoint.every",
    "adapter.dropout",
    "system.deadline",
    "system.min_rank",
    "privacy.count_noise",
    "privacy.noise_multiplier",
    "privacy.target_epsilon",
    "robust.byzantine",
    "ray.workers",
    "ray.threads",
    "robust.keep",
    "robust.norm_bound",
    "attack.noise_std",
    "dpsgd.noise_multiplier",
    "synthetic.ratio",
    "synthetic.examples_per_prompt",
    "remote.patience",
}
_STRICTLY_POSITIVE_FLOATS = {
    "data.alpha",
    "client.lr",
    "strategy.server_lr",
    "strategy.tau",
    "adapter.alpha",
    "privacy.clip",
    "privacy.clip_lr",
    "dpsgd.max_grad_norm",
    "secagg.clip",
    "synthetic.temperature",
    "remote.deadline",
    "ray.cpus_per_worker",
    "remote.max_update_mb",
    "remote.max_inflight_mb",
    "remote.stream_timeout",
}
_UNIT_INTERVAL = {"strategy.beta1", "strategy.beta2", "strategy.server_momentum"}
_CHOICES = {
    "backend": ("simulation", "ray"),
    "adapter.method": ("lora", "ia3", "bitfit", "head", "full"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.task": ("auto", "classification", "causal_lm"),
    "client.optimizer": ("adamw", "adam", "sgd"),
    "client.loss": ("ce", "balanced"),
    "compression.method": ("none", "quantize", "topk"),
    "compression.bits": (1, 2, 4, 8),
    "system.late": ("drop", "partial"),
    "privacy.noise": ("none", "central", "distributed"),
    "privacy.accountant": ("rdp", "prv"),
    "dpsgd.accountant": ("rdp", "prv"),
    "privacy.over_budget": ("refuse", "stop"),
    "robust.aggregator": ("mean", "median", "trimmed_mean", "krum", "multikrum"),
    "attack.kind": ("none", "label_flip", "sign_flip", "scale", "noise", "backdoor"),
    "synthetic.mode": ("none", "server_warmup", "client_mix", "synthetic_only"),
}
_OPEN_UNIT = {  # (0, 1)
    "privacy.delta",
    "dpsgd.delta",
    "privacy.target_quantile",
    "secagg.threshold",
}
_HALF_OPEN_UNIT = {  # [0, 1)
    "secagg.dropout",
    "attack.fraction",
    "robust.trim",
}


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _range_problems(cfg: RunConfig) -> list[str]:
    flat = _flat(cfg)
    problems = []
    for key, value in flat.items():
        if key in _POSITIVE and value < 1:
            problems.append(f"{key} = {value!r} must be >= 1")
        elif key in _NON_NEGATIVE and value < 0:
            problems.append(f"{key} = {value!r} must be >= 0")
        elif key in _STRICTLY_POSITIVE_FLOATS and not value > 0:
            problems.append(f"{key} = {value!r} must be > 0")
        elif key in (_UNIT_INTERVAL | _HALF_OPEN_UNIT) and not 0 <= value < 1:
            problems.append(f"{key} = {value!r} must be in [0, 1)")
        elif key in _OPEN_UNIT and not 0 < value < 1:
            problems.append(f"{key} = {value!r} must be in (0, 1)")
        elif key in _CHOICES and value not in _CHOICES[key]:
            hint = closest(str(value), [str(c) for c in _CHOICES[key]])
            problems.append(f"{key} = {value!r} is not one of {_CHOICES[key]}.{hint}")
    if not 0 < flat["compression.fraction"] <= 1:
        value = flat["compression.fraction"]
        problems.append(f"compression.fraction = {value!r} must be in (0, 1]")
    ranks, rank = flat["system.ranks"], flat["adapter.rank"]
    if ranks and flat["adapter.method"] != "lora":
        problems.append(
            f"system.ranks = {list(ranks)} gives clients LoRA ranks, but adapter.method = "
            f"{flat['adapter.method']!r}: set adapter.method = 'lora' or system.ranks = []"
        )
    if any(not 1 <= r <= rank for r in ranks):
        problems.append(
            f"system.ranks = {list(ranks)} must lie in [1, adapter.rank = {rank}]: the model "
            "holds adapter.rank components and a client trains the first r of them"
        )
    if ranks and flat["adapter.freeze_a"]:
        problems.append(
            "system.ranks with adapter.freeze_a = true: a frozen A keeps every component "
            "live, so a client cannot train only its first r; drop one of the two"
        )
    for key in ("system.layers", "system.steps"):
        if any(v < 1 for v in flat[key]):
            problems.append(f"{key} = {list(flat[key])} must all be >= 1")
    if any(not v > 0 for v in flat["system.speeds"]):
        problems.append(f"system.speeds = {list(flat['system.speeds'])} must all be > 0")
    if flat["model.dtype"] == "float16" and flat["adapter.method"] in ("bitfit", "full"):
        problems.append(
            f"model.dtype = 'float16' with adapter.method = {flat['adapter.method']!r} trains "
            "float16 tensors, which Adam turns into inf (its eps underflows): use model.dtype "
            "= 'bfloat16' or 'float32', or adapter.method = 'lora', 'ia3' or 'head'"
        )
    if flat["adapter.freeze_a"] and flat["adapter.method"] != "lora":
        problems.append(
            f"adapter.freeze_a = true freezes LoRA's A, but adapter.method = "
            f"{flat['adapter.method']!r}: set adapter.method = 'lora' or drop freeze_a"
        )
    if flat["remote.max_inflight_mb"] < flat["remote.max_update_mb"]:
        problems.append(
            f"remote.max_inflight_mb = {flat['remote.max_inflight_mb']!r} is below "
            f"remote.max_update_mb = {flat['remote.max_update_mb']!r}: the largest update "
            "could never arrive; raise remote.max_inflight_mb"
        )
    if not 0 < flat["remote.quorum"] <= 1:
        problems.append(f"remote.quorum = {flat['remote.quorum']!r} must be in (0, 1]")
    if not 0 < flat["strategy.fraction"] <= 1:
        problems.append(f"strategy.fraction = {flat['strategy.fraction']!r} must be in (0, 1]")
    if not 0 <= flat["data.client_eval_fraction"] < 1:
        value = flat["data.client_eval_fraction"]
        problems.append(f"data.client_eval_fraction = {value!r} must be in [0, 1)")
    device = flat["device"]
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        problems.append(f"device = {device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if flat["data.num_clients"] == 0 and flat["data.partition"] != "natural":
        problems.append(
            "data.num_clients = 0 means one client per group, which only data.partition = "
            "'natural' has: set data.num_clients >= 1"
        )
    problems.extend(_privacy_problems(flat))
    problems.extend(_synthetic_problems(flat))
    problems.extend(_data_file_problems(flat))
    if flat["client.epochs"] == 0 and flat["client.steps"] == 0:
        problems.append("client.epochs and client.steps are both 0: set one of them >= 1")
    return problems


def _data_file_problems(flat: dict[str, Any]) -> list[str]:
    """Column keys of a dataset file that cannot be right whatever the file holds."""
    problems = []
    if not flat["data.text_column"]:
        problems.append("data.text_column is empty: name the column that holds the text")
    names = list(flat["data.label_names"])
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        problems.append(f"data.label_names = {names} repeats {repeated}: list each class once")
    keys = ("text_column", "text_pair_column", "label_column", "group_column", "split_column")
    used = [(k, flat[f"data.{k}"]) for k in keys if flat[f"data.{k}"]]
    for i, (key, column) in enumerate(used):
        for other, same in used[i + 1 :]:
            if same == column and {key, other} != {"label_column", "group_column"}:
                problems.append(
                    f"data.{key} and data.{other} both name column {column!r}: give each its own"
                )
    return problems


def _privacy_problems(flat: dict[str, Any]) -> list[str]:
    """Settings of privacy, secure aggregation, robustness and attacks that cannot combine."""
    problems = []
    noise, robust = flat["privacy.noise"], flat["robust.aggregator"]
    if (
        noise != "none"
        and not flat["privacy.noise_multiplier"]
        and not flat["privacy.target_epsilon"]
    ):
        problems.append(
            f"privacy.noise = {noise!r} needs privacy.noise_multiplier > 0 or "
            "privacy.target_epsilon > 0 (the noise is derived from the budget)"
        )
    if not 0 <= flat["robust.trim"] < 0.5:
        problems.append(f"robust.trim = {flat['robust.trim']!r} must be in [0, 0.5)")
    if noise != "none" and robust != "mean":
        problems.append(
            f"privacy.noise = {noise!r} with robust.aggregator = {robust!r}: the accountant's "
            "guarantee is for a noised sum of clipped updates; use robust.norm_bound instead"
        )
    if flat["secagg.enabled"] and robust != "mean":
        problems.append(
            f"secagg.enabled = true with robust.aggregator = {robust!r}: the server sees only "
            "the sum, so it cannot take a median or pick updates; set robust.aggregator = 'mean'"
        )
    if flat["secagg.enabled"] and flat["compression.method"] != "none":
        problems.append(
            f"secagg.enabled = true with compression.method = {flat['compression.method']!r}: "
            "masked vectors are dense ring elements; set compression.method = 'none'"
        )
    if flat["secagg.enabled"] and flat["robust.norm_bound"] > 0:
        problems.append(
            "secagg.enabled = true with robust.norm_bound > 0: the server cannot see an "
            "update's norm; bound it on the client with privacy.clip (privacy.noise) instead"
        )
    noised = noise != "none" or flat["secagg.enabled"] or robust != "mean"
    if noised and flat["strategy.name"] in ("flora", "scaffold", "local", "centralized"):
        problems.append(
            f"strategy.name = {flat['strategy.name']!r} aggregates more than the mean delta, so "
            "privacy.noise, secagg and robust.aggregator do not apply to it: use fedavg, "
            "fedprox, fedavgm, fedadam, fedyogi or fedadagrad"
        )
    if flat["attack.kind"] != "none" and flat["attack.fraction"] == 0:
        problems.append(
            f"attack.kind = {flat['attack.kind']!r} with attack.fraction = 0 attacks nobody: "
            "set attack.fraction in (0, 1)"
        )
    if flat["dpsgd.enabled"] and flat["dpsgd.noise_multiplier"] == 0:
        problems.append("dpsgd.enabled = true needs dpsgd.noise_multiplier > 0")
    if flat["dpsgd.enabled"] and flat["strategy.name"] in ("fedprox", "scaffold"):
        problems.append(
            f"dpsgd.enabled = true with strategy.name = {flat['strategy.name']!r}: its local "
            "loss term or gradient correction is not per-example, so DP-SGD would ignore it; "
            "use fedavg or a server optimiser (fedadam, fedyogi, ...)"
        )
    if flat["dpsgd.enabled"] and flat["system.layers"]:
        problems.append(
            "dpsgd.enabled = true with system.layers: clients that freeze layers are not "
            "supported under DP-SGD yet; set system.layers = []"
        )
    return problems


def _synthetic_problems(flat: dict[str, Any]) -> list[str]:
    problems = []
    unit = ("synthetic.top_p", "synthetic.near_duplicate", "synthetic.contamination_similarity")
    for key in unit:
        if not 0 < flat[key] <= 1:
            problems.append(f"{key} = {flat[key]!r} must be in (0, 1]")
    if not 0 <= flat["synthetic.min_confidence"] < 1:
        value = flat["synthetic.min_confidence"]
        problems.append(f"synthetic.min_confidence = {value!r} must be in [0, 1)")
    if flat["synthetic.min_words"] > flat["synthetic.max_words"]:
        problems.append(
            f"synthetic.min_words = {flat['synthetic.min_words']} is above synthetic.max_words "
            f"= {flat['synthetic.max_words']}: no text could pass the length filter"
        )
    mode = flat["synthetic.mode"]
    if mode != "none" and flat["attack.kind"] in ("label_flip", "backdoor"):
        problems.append(
            f"synthetic.mode = {mode!r} with attack.kind = {flat['attack.kind']!r}: poisoned "
            "copies of a mixed real and synthetic pool are not supported; drop one of the two"
        )
    if mode == "client_mix" and flat["synthetic.ratio"] == 0:
        problems.append("synthetic.mode = 'client_mix' with synthetic.ratio = 0 adds nothing")
    return problems


# ---------------------------------------------------------------- parsing and typing


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotated type ``hint``; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        example = {str: '["query"]', int: "[2, 4, 8]", float: "[0.5, 1.0]"}[item]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} = {value!r} must be a list, e.g. {example}")
        try:
            return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
        except ConfigError as err:
            raise ConfigError(f"{err} (in the list {key}, e.g. {example})") from err
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation {hint} for {key}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint):
        raise ConfigError(
            f"{key} = {value!r} has type {type(value).__name__}; expected {hint.__name__}"
        )
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r} has type bool; expected int")
    return value


def _build(cls: type, table: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            hint = closest(key, hints)
            problems.append(f"unknown key '{dotted}'.{hint} Valid keys here: {', '.join(hints)}")
            continue
        hint_type: Any = hints[key]
        if isinstance(hint_type, type) and dataclasses.is_dataclass(hint_type):
            if not isinstance(value, dict):
                problems.append(f"'{dotted}' must be a table ([{dotted}])")
                continue
            kwargs[key] = _build(hint_type, value, f"{dotted}.", problems)
            continue
        try:
            kwargs[key] = _coerce(dotted, value, hint_type)
        except ConfigError as err:
            problems.append(str(err))
    try:
        return cls(**kwargs)
    except ConfigError as err:  # range problems found by RunConfig.__post_init__
        problems.extend(err.problems)
        return None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"--set '{item}' must look like key=value, e.g. --set strategy.name=fedprox"
        )
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set strategy.name=fedprox
    return key.split("."), value


def _merge(table: dict[str, Any], path: list[str], value: Any) -> None:
    node = table
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not a table")
    node[path[-1]] = value


def config_from_dict(table: dict[str, Any]) -> RunConfig:
    """Build a validated :class:`RunConfig` from a TOML-shaped dict; reports all problems."""
    problems: list[str] = []
    cfg = _build(RunConfig, table, "", problems)
    if problems:
        raise _invalid(problems)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a TOML config (defaults when ``path`` is None); apply ``key=value`` overrides."""
    table: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from err
    for item in overrides:
        keys, value = _parse_override(item)
        _merge(table, keys, value)
    return config_from_dict(table)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as nested plain dicts and lists (tuples become lists), ready for TOML/JSON."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: RunConfig) -> str:
    """Serialise the resolved config as TOML (round-trips through :func:`load_config`)."""
    table = to_dict(cfg)
    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for section, values in table.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"
