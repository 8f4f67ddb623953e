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
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedfm.errors import ConfigError, closest


def knob(default: Any, doc: str, *, factory: bool = False) -> Any:
    """A config field and its documentation, kept as the field's ``metadata["doc"]``.

    The README's config table is generated from these docs (``make config-table``). With
    ``factory=True``, ``default`` is called for each instance (a nested config table).
    """
    if factory:
        return field(default_factory=default, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = knob(
        "trec6",
        "a registry name: `trec6`, `sentiment4`, `sms_spam`, `shakespeare` (causal LM), "
        "`digits` (features), or the path of your own data: a `.csv`, `.tsv`, `.jsonl`, "
        "`.json`, `.parquet` or `.txt` (one document per line) file, or a `datasets` "
        "`save_to_disk` folder (see [Your own data](#your-own-data))",
    )
    partition: str = knob(
        "dirichlet",
        "`iid`, `dirichlet` (label skew), `shards` (k labels per client), `quantity` "
        "(size skew), `natural` (domain or speaker ids)",
    )
    num_clients: int = knob(
        10, "clients; with `natural`, 0 = one per group, N = a seeded subset of N groups"
    )
    alpha: float = knob(
        0.5,
        "Dirichlet concentration: label skew (`dirichlet`) or size skew (`quantity`); "
        "smaller = more skew",
    )
    shards_per_client: int = knob(
        2, "`shards`: shards (≈ labels) per client (pathological non-IID)"
    )
    min_client_size: int = knob(
        8,
        "every client gets at least this many training examples, or the partition is "
        "refused with a fix",
    )
    client_eval_fraction: float = knob(
        0.1, "share of each client's data held out for per-client evaluation"
    )
    max_length: int = knob(
        64,
        "tokens per example (truncation; `instruction` cuts the prompt side first and counts "
        "the responses whose end it cuts); batches are padded to their own longest example",
    )
    max_train_examples: int = knob(0, "0 = all; N = a seeded subsample of the training pool")
    max_test_examples: int = knob(0, "0 = all; N = a seeded subsample of the global test set")
    # the keys below read a dataset file (data.dataset = a path); the registry's ignore them
    task: str = knob(
        "auto",
        "a data file's task: `classification`, `causal_lm`, `instruction` (chat: the loss on "
        "the assistant's tokens only), `preference` (DPO on a prompt with a chosen and a "
        "rejected response, see [docs/instruct.md](docs/instruct.md)), or `auto` = "
        "preference if the file has `data.chosen_column` and `data.rejected_column`, else "
        "instruction if it has `data.messages_column` or `data.prompt_column` and "
        "`data.response_column` (and not both `data.text_column` and `data.label_column`), "
        "else classification if it has `data.label_column`, else causal LM (a registry "
        "dataset must leave `auto`)",
    )
    text_column: str = knob("text", "a data file's text column (causal LM: the document to model)")
    text_pair_column: str = knob(
        "",
        'a second text per row, tokenised as a pair (NLI, question + passage); `""` = none',
    )
    label_column: str = knob("label", "a data file's label column: class names or integer ids")
    label_names: tuple[str, ...] = knob(
        (),
        "class names in id order; `[]` = from the data: the column's `ClassLabel` names, "
        "else integer ids sorted numerically, else names sorted. For a file, the job "
        "resolves them (and `data.task`) into its config: the model card's config shows "
        "them and `fedfm serve` sends them to its remote clients",
    )
    group_column: str = knob(
        "",
        'a data file\'s client or owner column: `data.partition = "natural"` makes one '
        "client per value",
    )
    split_column: str = knob(
        "",
        'a data file\'s `train`/`test` column; `""` = a seeded 20% test set, stratified '
        "by label (and group), as for the registry's datasets",
    )
    prompt_column: str = knob(
        "prompt",
        "instruction and preference: a data file's prompt column (the user's message; for "
        "preference also a list of `{role, content}` messages ending with the user's)",
    )
    response_column: str = knob(
        "response", "instruction: a data file's response column (the assistant's message)"
    )
    messages_column: str = knob(
        "messages",
        "instruction: a data file's multi-turn column, a list of `{role, content}` "
        "(`system`, `user`, `assistant`) ending with the assistant's response; used in place "
        "of the prompt and response columns when the file has it. `data.label_column`, if "
        "the file has it, gives each row a category (partitions and per-category scores)",
    )
    system_prompt: str = knob(
        "",
        'instruction: a system message put before every conversation that has none; `""` '
        "= none (the chat template's own default, if it has one)",
    )
    chosen_column: str = knob(
        "chosen", "preference: a data file's preferred response column (the assistant's)"
    )
    rejected_column: str = knob(
        "rejected", "preference: a data file's rejected response column (the assistant's)"
    )


@dataclass(frozen=True)
class ModelConfig:
    name: str = knob(
        "minilm",
        "a registry name: `minilm` (text encoder), `smollm2-135m` (causal LM, also "
        "classification), `mlp` (features), or the path of your own Hugging Face model "
        "folder (see [Your own model](#your-own-model))",
    )
    pretrained: bool = knob(
        True,
        '`false` = same architecture, random init (the baseline of "a pre-trained start helps")',
    )
    dtype: str = knob(
        "float32",
        "the backbone's dtype: `float32`, `bfloat16`, `float16`; LoRA/IA3 tensors and the "
        "task head train in float32 on a half-precision backbone; `bitfit` and `full` train "
        "in the backbone's dtype (refused with `float16`)",
    )
    trust_remote_code: bool = knob(
        False,
        "let a model folder run its own Python code (`auto_map` in its `config.json`); off "
        "unless set",
    )
    chat_template: str = knob(
        "",
        "instruction: the Jinja chat template that renders conversations, or the path of a "
        'file holding one; `""` = the tokenizer\'s own (a model without one is refused)',
    )
    init_adapter: str = knob(
        "",
        "a finished run folder whose final params (`adapter.safetensors`) this run starts "
        "from, e.g. an instruction (SFT) run before a preference (DPO) run; the backbone and "
        'the adapter config must be that run\'s. `""` = a fresh adapter',
    )


@dataclass(frozen=True)
class AdapterConfig:
    method: str = knob(
        "lora",
        "`lora` (peft LoRA + the task head), `ia3` (peft IA3 + the task head), `bitfit` "
        "(bias terms + the task head), `head` (linear probe), `full` (full fine-tuning)",
    )
    rank: int = knob(8, "LoRA rank r")
    alpha: float = knob(16.0, "LoRA scaling alpha (scale = alpha / r)")
    dropout: float = knob(0.0, "LoRA dropout")
    target_modules: tuple[str, ...] = knob(
        (),
        "modules LoRA wraps; empty = peft's default for the architecture (bert: query, "
        "value; llama: q_proj, v_proj)",
    )
    freeze_a: bool = knob(
        False,
        "LoRA: A stays at its shared seeded init, only B trains and travels (FFA-LoRA: "
        "FedAvg becomes exact, half the LoRA bytes)",
    )


@dataclass(frozen=True)
class ClientConfig:
    epochs: int = knob(1, "local epochs over the client's data")
    steps: int = knob(0, "> 0: exactly this many local steps instead of epochs")
    batch_size: int = knob(32, "local batch size")
    bucket_by_length: bool = knob(
        False,
        "text: form each local batch from examples of similar length (shuffle, sort chunks "
        "of 50 batches by length, cut, shuffle the batches): less padding, every example "
        "once per epoch, batch order still random; no effect on feature datasets; refused "
        "with `dpsgd.enabled`. See [docs/batching.md](docs/batching.md)",
    )
    optimizer: str = knob("adamw", "`adamw`, `adam`, `sgd` (fresh each round)")
    lr: float = knob(5e-3, "local learning rate")
    momentum: float = knob(0.0, "SGD momentum (`sgd` only)")
    weight_decay: float = knob(0.0, "weight decay")
    max_grad_norm: float = knob(1.0, "gradient clipping norm; 0 = off")
    loss: str = knob(
        "balanced",
        "classification loss: `balanced` (each client's label prior added to the logits "
        "while it trains: balanced softmax against label skew; evaluation is unchanged; "
        "personalised runs always use `ce`) or `ce` (plain cross-entropy; experiments E1-E6 "
        "ran with it). See [docs/label-skew.md](docs/label-skew.md)",
    )
    dpo_beta: float = knob(
        0.1,
        "preference: DPO's beta, the weight of the implicit reward `beta * log(policy / "
        "reference)`; larger = stay closer to the reference",
    )
    gradient_checkpointing: bool = knob(
        False,
        "recompute a transformer's activations in the backward pass instead of keeping "
        "them: less memory, about a third more compute (Hugging Face models only)",
    )
    prefix_cache: bool = knob(
        False,
        "run the frozen prefix (embeddings and the layers below the lowest trained one, over "
        "every client's profile) once per example and keep its output for every round, client "
        "and evaluation; training then runs only the top layers and the head. Needs frozen "
        'embeddings and a top-layer cut (`adapter.method = "head"`, or `system.layers`); '
        "BERT/RoBERTa classifiers and Llama/Qwen2 causal LMs. Exact up to float rounding "
        "when no dropout acts below the cut: the prefix runs without dropout. See "
        "[docs/prefix-cache.md](docs/prefix-cache.md)",
    )
    prefix_cache_mb: int = knob(
        1024,
        "`prefix_cache`: the most MiB the cached states may take (every training and test "
        "example's tokens x hidden size x 4 bytes in float32); a job that needs more is "
        "refused before its first round",
    )


@dataclass(frozen=True)
class StrategyConfig:
    name: str = knob(
        "fedavg",
        "`fedavg`, `fedprox`, `fedavgm`, `fedadam`, `fedyogi`, `fedadagrad`, `scaffold`, "
        "`flora` (LoRA by stacking: the exact mean of client products); references: "
        "`local` (each client trains alone, evaluated on its own split, nothing travels), "
        "`centralized` (one model on the pooled data)",
    )
    fraction: float = knob(
        0.5, "share of clients sampled per round (seeded), used when `clients_per_round` = 0"
    )
    clients_per_round: int = knob(0, "> 0: this many clients per round instead of `fraction`")
    proximal_mu: float = knob(
        0.01,
        "FedProx: weight of the proximal term (μ/2)‖w − w_global‖² in every client's loss",
    )
    server_lr: float = knob(1.0, "server step size (FedAvgM, FedAdam/Yogi/Adagrad, SCAFFOLD)")
    server_momentum: float = knob(0.9, "FedAvgM momentum")
    beta1: float = knob(0.9, "FedAdam/Yogi/Adagrad first-moment decay")
    beta2: float = knob(0.99, "FedAdam/Yogi second-moment decay")
    tau: float = knob(1e-3, "FedAdam/Yogi/Adagrad adaptivity ε")
    reproject: bool = knob(
        True,
        "`flora`: `true` = re-project the exact mean of the clients' LoRA products to "
        "`adapter.rank` by SVD (FlexLoRA's server step); `false` = merge it into the frozen "
        "weights exactly and restart LoRA from (A0, 0) (FLoRA): clients download the stacks "
        "they missed",
    )
    personal: tuple[str, ...] = knob(
        (),
        'tensors each client keeps to itself (personalisation): `"lora_B"` (FedSA-LoRA), '
        '`"head"` (a local task head, FedPer-style) or any name fragment; evaluated per '
        "client with its own tensors; `[]` = all shared",
    )


@dataclass(frozen=True)
class CompressionConfig:
    method: str = knob(
        "none",
        "what clients upload: `none`, `quantize` (stochastic b-bit rounding, unbiased) or "
        "`topk` (largest magnitudes); bytes are the exact wire size",
    )
    bits: int = knob(8, "`quantize`: 1, 2, 4 or 8 bits per value (per-tensor range)")
    fraction: float = knob(
        0.1, "`topk`: share of each tensor's entries sent (values + int32 positions)"
    )
    error_feedback: bool = knob(
        True, "carry what compression dropped into the client's next upload"
    )


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg, McMahan et al., 2018)."""

    noise: str = knob(
        "none",
        "client-level DP (DP-FedAvg): `none`, `central` (the server noises the sum) or "
        "`distributed` (each client adds its share); with noise, the mean becomes "
        "unweighted over the cohort size",
    )
    clip: float = knob(
        1.0, "L2 bound on each client's whole update (the start value when adaptive)"
    )
    adaptive_clip: bool = knob(
        False,
        "move the clip norm toward a quantile of update norms each round (Andrew et al. "
        "2021); the noised count is paid for within the same epsilon",
    )
    target_quantile: float = knob(0.5, "adaptive: share of updates that should stay unclipped")
    clip_lr: float = knob(0.2, "adaptive: geometric step of the clip norm")
    count_noise: float = knob(
        0.0, "adaptive: stddev of the unclipped count's noise; 0 = cohort / 20"
    )
    noise_multiplier: float = knob(
        0.0, "noise stddev / clip; 0 = the least that keeps `rounds` within `target_epsilon`"
    )
    target_epsilon: float = knob(
        0.0,
        "the run's privacy budget at `delta`; a run that would exceed it is refused (or "
        "stopped, see `over_budget`); 0 = no budget",
    )
    delta: float = knob(1e-5, "the delta every epsilon is reported at, in (0, 1)")
    accountant: str = knob(
        "rdp",
        "Opacus' `rdp` or `prv` accountant; epsilon per round goes to `metrics.jsonl` and "
        "`privacy_ledger.jsonl`",
    )
    over_budget: str = knob(
        "refuse", "`refuse` to start, or `stop` after the last round the budget allows"
    )


@dataclass(frozen=True)
class DPSGDConfig:
    """Sample-level differential privacy: DP-SGD in every client's local trainer (Opacus)."""

    enabled: bool = knob(
        False,
        "sample-level DP: DP-SGD in every client's trainer (Opacus per-example clipping and "
        "noise); records each round's worst client epsilon",
    )
    noise_multiplier: float = knob(1.0, "noise stddev / `max_grad_norm`")
    max_grad_norm: float = knob(
        1.0, "per-example gradient L2 bound (replaces `client.max_grad_norm`)"
    )
    delta: float = knob(1e-5, "the delta of the sample-level epsilon")
    accountant: str = knob("rdp", "Opacus' `rdp` or `prv` accountant")


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (SecAgg, Bonawitz et al., 2017): the server learns only the sum."""

    enabled: bool = knob(
        False,
        "secure aggregation (SecAgg: X25519 pairwise masks, Shamir-shared keys, 32-bit "
        "fixed point): the server learns only the sum; its bytes and seconds are recorded",
    )
    threshold: float = knob(
        0.67,
        "share of the cohort whose secret shares rebuild a dropped client's key (Shamir t); "
        "more dropouts than `cohort - t` fail the round with a clear error",
    )
    clip: float = knob(
        1.0,
        "each coordinate is clamped to `[-clip, clip]` before fixed-point encoding "
        "(`secagg_clamped` counts them)",
    )
    dropout: float = knob(
        0.0,
        "share of the cohort that drops after sharing keys (simulated; recovered through "
        "the shares)",
    )


@dataclass(frozen=True)
class RobustConfig:
    """Byzantine-robust aggregation: replaces the weighted mean of client deltas."""

    aggregator: str = knob(
        "mean",
        "`mean` (the weighted mean of client deltas), or in its place `median` "
        "(coordinate-wise), `trimmed_mean`, `krum` or `multikrum`, under FedAvg or a server "
        "optimiser",
    )
    trim: float = knob(
        0.1,
        "`trimmed_mean`: share of values cut at each end of every coordinate, in [0, 0.5)",
    )
    byzantine: int = knob(0, "`krum`/`multikrum`: attackers tolerated f; 0 = 30% of the cohort")
    keep: int = knob(
        0,
        "`multikrum`: updates averaged; 0 = cohort - f (the kept ids are recorded as "
        "`robust_kept`)",
    )
    norm_bound: float = knob(
        0.0,
        "> 0: the server scales each update to at most this L2 norm first (`robust_bounded` "
        "records whom)",
    )


@dataclass(frozen=True)
class AttackConfig:
    """Simulated malicious clients (a seeded, fixed set for the whole run)."""

    kind: str = knob(
        "none",
        "malicious clients: `none`, `label_flip`, `backdoor` (data), `sign_flip`, `scale`, "
        "`noise` (model)",
    )
    fraction: float = knob(
        0.0,
        "share of clients that are malicious (a seeded set, recorded per round as `malicious`)",
    )
    scale: float = knob(
        10.0,
        "`scale`: factor on the update (model replacement); `sign_flip`: the update times `-scale`",
    )
    noise_std: float = knob(0.1, "`noise`: the update is replaced by Gaussian noise of this stddev")
    trigger: str = knob(
        "cf mn bb",
        "`backdoor`: phrase put in front of poisoned texts; `test_attack_success_rate` is "
        "the share of triggered test texts classified as the target",
    )
    target_label: int = knob(0, "`backdoor`: the class the trigger maps to")
    poison_fraction: float = knob(
        0.5, "`backdoor`: share of a malicious client's examples poisoned"
    )


@dataclass(frozen=True)
class SyntheticConfig:
    """Labelled examples written by a generative FM, and how the federation uses them."""

    mode: str = knob(
        "none",
        "FM-written training data: `none`, `server_warmup` (train the global adapter and "
        "head on it before round 1, GPT-FL), `client_mix` (each client adds synthetic "
        "examples, FedGC), `synthetic_only` (clients hold synthetic data only: a lower "
        "reference). See [docs/synthetic.md](docs/synthetic.md)",
    )
    size: int = knob(
        300,
        "examples generated with SmolLM2-135M-Instruct (labels balanced), before the filters",
    )
    ratio: float = knob(1.0, "`client_mix`: synthetic examples added per real example of a client")
    warmup_epochs: int = knob(
        2,
        "`server_warmup`: passes over the synthetic set before round 1 (the `[client]` "
        "optimiser and lr)",
    )
    path: str = knob(
        "",
        "use this synthetic JSONL, written by `fedfm synth --out FILE`, instead of generating",
    )
    descriptions: tuple[str, ...] = knob(
        (),
        "one description per label for the prompt; `[]` = the built-in ones (trec6, "
        "sentiment4, sms_spam)",
    )
    seed_file: str = knob(
        "",
        'JSONL of public seed examples `{"text", "label"}` listed in prompts (default: '
        "fedfm's own few per label)",
    )
    examples_per_prompt: int = knob(3, "seed (or built-in) examples listed in each prompt")
    temperature: float = knob(
        1.0, "sampling temperature (the sampling settings are recorded in every row)"
    )
    top_p: float = knob(0.95, "nucleus sampling")
    max_new_tokens: int = knob(40, "longest example; a row also stops at its first line break")
    batch_size: int = knob(32, "prompts sampled together")
    seed: int = knob(
        0,
        "generation seed: topics, listed examples and sampling (each batch's seed is recorded)",
    )
    min_words: int = knob(3, "length filter: fewest words")
    max_words: int = knob(60, "length filter: most words")
    near_duplicate: float = knob(
        0.95, "MiniLM cosine at which a later sample is a near-copy of a kept one"
    )
    min_confidence: float = knob(
        0.3,
        "label filter: drop a sample whose out-of-fold probe (logistic regression on MiniLM "
        "embeddings) gives its intended label less",
    )
    relabel: bool = knob(
        False,
        "label filter: relabel a sample whose probe's top label has p >= 0.5 instead of "
        "dropping it",
    )
    contamination_ngram: int = knob(
        8, "a word n-gram of this length shared with the test set drops a sample"
    )
    contamination_similarity: float = knob(
        0.9, "so does a test example at this MiniLM cosine or closer"
    )


@dataclass(frozen=True)
class RemoteConfig:
    """``fedfm serve``: remote clients over gRPC (ignored by the simulator)."""

    address: str = knob(
        "localhost:50051",
        "`fedfm serve`: where the gRPC server listens. See [docs/remote.md](docs/remote.md)",
    )
    clients: tuple[str, ...] = knob(
        (),
        "`fedfm serve`: client ids in federation order (client i holds partition i); "
        "`data.num_clients` must equal their count",
    )
    deadline: float = knob(
        600.0,
        "seconds a round waits for its whole cohort before closing on a quorum (see "
        "`remote.patience`); late or dead clients are recorded",
    )
    quorum: float = knob(1.0, "share of the cohort whose updates a round needs to close, in (0, 1]")
    tls_dir: str = knob(
        "",
        "folder from `fedfm admin init-tls`: the CA (`ca.pem`), the server certificate and "
        "key (`server.pem`, `server.key`), `clients.json` of token hashes",
    )
    mutual_tls: bool = knob(
        False,
        "also require a client certificate signed by the CA (`fedfm admin add-client --cert`)",
    )
    insecure: bool = knob(False, "plaintext, for loopback tests only; never across machines")
    max_update_mb: float = knob(1024.0, "the largest update a client may send (MB)")
    max_inflight_mb: float = knob(
        2048.0,
        "MB of updates the server buffers at once, all clients together (at least "
        "`remote.max_update_mb`)",
    )
    max_examples: int = knob(
        1_000_000, "the largest `num_examples` (FedAvg weight) an update may claim"
    )
    stream_timeout: float = knob(30.0, "seconds a stream may stall before the server cuts it")
    patience: int = knob(
        1, "more deadlines a round below the quorum waits, then it closes with what arrived"
    )


@dataclass(frozen=True)
class RayConfig:
    """``backend = "ray"``: the simulation's clients train on Ray actors (one backbone each)."""

    address: str = knob(
        "",
        '`backend = "ray"`: `""` starts a local Ray; `"auto"` or `"ray://HOST:10001"` '
        "joins a cluster",
    )
    workers: int = knob(
        0, "Ray actors, each with its own copy of the model; 0 = one per CPU Ray offers"
    )
    cpus_per_worker: float = knob(1.0, "CPUs Ray reserves for each actor")
    threads: int = knob(0, "torch threads in each actor; 0 = `ray.cpus_per_worker` (at least 1)")


@dataclass(frozen=True)
class SystemConfig:
    """Resource profiles: what each simulated client can do (drawn per client, seeded)."""

    ranks: tuple[int, ...] = knob(
        (),
        "LoRA rank per client, drawn (seeded) from this list, each <= `adapter.rank`; a "
        "client trains and sends its first r components (HetLoRA padding with `fedavg`, "
        "FlexLoRA with `flora`); `[]` = `adapter.rank` for all",
    )
    speeds: tuple[float, ...] = knob(
        (), "relative compute speed per client, drawn from this list (1.0 = reference)"
    )
    layers: tuple[int, ...] = knob(
        (),
        "top transformer layers whose tensors a client trains, drawn from this list; the "
        "rest neither change nor travel up (`[]` = all)",
    )
    steps: tuple[int, ...] = knob(
        (),
        "local steps of a full round per client, drawn from this list (`[]` = the "
        "`[client]` config's epochs or steps)",
    )
    deadline: float = knob(
        0.0,
        "per-round budget in local steps at speed 1.0 (simulated time); 0 = none. Records "
        "`stragglers` and `sim_time`",
    )
    late: str = knob(
        "drop",
        "a client that misses the deadline: `drop` (recorded in `excluded`) or `partial` "
        "(sends the `floor(deadline × speed)` steps it managed)",
    )
    min_rank: int = knob(
        0,
        'clients of lower rank are left out of every round (the "drop the weak clients" baseline)',
    )


@dataclass(frozen=True)
class EvalConfig:
    every: int = knob(1, "evaluate the global model every k rounds (and at the last round)")
    per_client: bool = knob(
        False, "also evaluate on every client's held-out split: mean and worst-10%"
    )
    initial: bool = knob(
        False, "also evaluate before round 1, recorded as round 0 (the untouched model)"
    )
    batch_size: int = knob(
        256, "evaluation batch size (batches sorted by length, under `inference_mode`)"
    )
    generate: bool = knob(
        False,
        "instruction: also score the model's greedy responses to held-out prompts "
        "(`test_gen_*`, `client_gen_*`) and write `generations.md`. See "
        "[docs/generation.md](docs/generation.md)",
    )
    max_new_tokens: int = knob(64, "`eval.generate`: the most tokens generated per response")
    generate_examples: int = knob(
        8, "`eval.generate`: test examples shown in the run's `generations.md`; 0 = no file"
    )
    scorer: str = knob(
        "text",
        "`eval.generate`: `text` (exact match after normalisation, and ROUGE-L, the main "
        "score) or `label` (accuracy: the response names the reference label)",
    )
    generate_batch_size: int = knob(
        16, "`eval.generate`: prompts generated together (left-padded, with the KV cache)"
    )
    generate_max_prompts: int = knob(
        0,
        "`eval.generate`: 0 = every held-out example; N = a seeded subset of N test prompts "
        "and at most N per client (bounds the time generation takes)",
    )


@dataclass(frozen=True)
class SimulationConfig:
    """``backend = "simulation"``: how the in-process simulator trains a round's cohort."""

    parallel_clients: int = knob(
        0,
        "train up to N cohort members together on the one backbone (their LoRA factors and "
        "head stacked along a client axis, one forward and backward for all; per-client "
        "optimiser state, clipping and seeds): the same params as one after another to float "
        "tolerance, bitwise only up to dropout (masks are drawn for the whole stack). 0 or 1 = "
        "one after another. LoRA only; refused with `dpsgd`, `preference`, `client.prefix_cache`, "
        "`ray` and `remote`. See [docs/parallel-clients.md](docs/parallel-clients.md)",
    )


@dataclass(frozen=True)
class PFTConfig:
    """``fedfm transfer pft``: one-shot FedPFT (Gaussian mixtures of frozen FM features)."""

    encoder: str = knob(
        "minilm",
        "the frozen FM that embeds every text (mean-pooled last hidden state, unit length): "
        "`minilm` or the path of a Hugging Face encoder folder",
    )
    components: int = knob(
        2,
        "Gaussian components per class per client (a class with fewer than 2 rows per "
        "component gets fewer)",
    )
    covariance: str = knob("diag", "the mixtures' covariance: `diag` or `full`")
    samples_per_class: int = knob(
        0,
        "synthetic features the server draws per class and client: 0 = as many as the "
        "client has of that class, N = N each",
    )
    head: str = knob("linear", "the classifier on the features: `linear` or `mlp`")
    hidden: int = knob(128, "`mlp` head: hidden units")
    epochs: int = knob(30, "head training epochs (on synthetic, real or a client's features)")
    lr: float = knob(1e-2, "head training learning rate (Adam)")
    batch_size: int = knob(64, "head training batch size")
    fedavg_rounds: int = knob(
        20, "the plain-FL reference: FedAvg rounds of the same head, every client each round"
    )
    fedavg_epochs: int = knob(1, "the plain-FL reference: local epochs per round")


@dataclass(frozen=True)
class DistillConfig:
    """``[distill]``: FedDF / FedMKT-style ensemble distillation between the FM on the server
    and the clients' small model (the run's ``model.name``), after every aggregation."""

    enabled: bool = knob(False, "distil between the server's FM and the clients' small model")
    teacher: str = knob(
        "minilm",
        "the server's FM (with a LoRA adapter and a classifier head): a registry name or a "
        "Hugging Face folder; ignored when `distill.teacher_adapter` names a run",
    )
    teacher_adapter: str = knob(
        "",
        "a finished fedfm run folder whose final params (LoRA + head) start the teacher, with "
        "that run's `model.name` and `[adapter]`; empty = a fresh default LoRA and head",
    )
    public: str = knob(
        "",
        "the server's unlabelled public set: a registry dataset name (its training texts) or "
        "a data file read with the `[data]` column keys; labels are never read",
    )
    public_size: int = knob(512, "a seeded subsample of the public set; 0 = all of it")
    directions: str = knob(
        "both",
        "`to_client` (the FM's logits into the aggregated small model), `to_teacher` (the "
        "cohort's ensemble into the FM's adapter) or `both`",
    )
    temperature: float = knob(2.0, "softmax temperature T of both KL losses (scaled by T²)")
    steps: int = knob(20, "distillation steps per direction per round")
    lr: float = knob(1e-3, "Adam learning rate of the small model's distillation")
    teacher_lr: float = knob(
        0.0, "Adam learning rate of the FM adapter's distillation; 0 = `distill.lr`"
    )
    batch_size: int = knob(32, "public examples per distillation step")


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``: split fine-tuning (SplitFed v1): a weak client computes the embeddings and
    its bottom ``layers`` only; the server runs the rest on the activations it sends."""

    enabled: bool = knob(
        False,
        "split each client's forward at layer `split.layers`: the client sends the activations "
        "there (and the attention mask and labels: the server computes the loss) and the server "
        "runs the rest. The activations and labels reveal the data. BERT/RoBERTa classifiers "
        'and Llama/Qwen2 causal LMs, `backend = "simulation"` only. See '
        "[docs/split.md](docs/split.md)",
    )
    layers: int = knob(
        1,
        "k: the client computes the embeddings and layers `0..k-1` (1 <= k <= the model's "
        "layers); the server computes layers `k..`, the final norm or pooler and the head",
    )
    client_trains: bool = knob(
        True,
        "`true`: the client's adapter tensors (below layer k) train on the gradient of the "
        "activations the server sends back, and their delta travels up; `false`: the "
        "client's part is frozen and only activations travel (no gradient comes down)",
    )
    noise: float = knob(
        0.0,
        "stddev of the Gaussian noise the client adds to each activation before sending it; "
        "0 = none. Required > 0 with `privacy.noise`; not a DP guarantee (no accounting)",
    )
    clip: float = knob(
        0.0,
        "bound the L2 norm of each example's activations (over its real tokens) before the "
        "noise, so the noise has a known scale relative to the signal; 0 = no bound",
    )


@dataclass(frozen=True)
class AsynchronousConfig:
    """``[asynchronous]``: FedBuff (Nguyen et al., 2022): buffered asynchronous aggregation on
    the simulated clock of the ``[system]`` speeds, or with ``fedfm serve``'s remote clients on
    the wall clock. See [docs/async.md](docs/async.md)."""

    enabled: bool = knob(
        False,
        "asynchronous rounds (FedBuff): clients train from the global version they last "
        "received and the server steps each time `asynchronous.buffer` updates have arrived; "
        'a round is one such server step. `backend = "simulation"` or `"ray"` (simulated clock) '
        'or `"remote"` (`fedfm serve`, wall clock). See [docs/async.md](docs/async.md)',
    )
    buffer: int = knob(
        0,
        "K: updates per server step; 0 = the cohort size (`strategy.clients_per_round` or "
        "`strategy.fraction`); at most `asynchronous.concurrency`",
    )
    concurrency: int = knob(
        0, "clients training at once (each replaced as it arrives); 0 = the cohort size"
    )
    staleness: str = knob(
        "polynomial",
        "weight s(τ) of an update τ server steps stale (τ = version applied to - version "
        "it started from), multiplying its delta before the example-weighted mean: `constant` "
        "s = 1; `polynomial` s = (1 + τ)^(-a); `hinge` s = 1 if τ <= b else 1 / (a (τ - b) + 1)",
    )
    staleness_a: float = knob(
        0.5,
        "`polynomial`: the exponent a (0.5: FedBuff's 1/sqrt(1 + τ)); `hinge`: the slope a",
    )
    staleness_b: float = knob(4.0, "`hinge`: staleness b up to which an update keeps weight 1")


@dataclass(frozen=True)
class OffsiteConfig:
    """Offsite tuning: clients train the bottom and top layers' adapters on an emulator."""

    enabled: bool = knob(
        False,
        "offsite tuning (Xiao et al. 2023): clients train the adapters of the bottom and top "
        "layers on an emulator (the model with a uniform share of its frozen middle layers "
        "dropped); the server evaluates them plugged into the full model (`test_*`) and in "
        "the emulator (`emulator_test_*`). LoRA or IA3; BERT/RoBERTa and Llama/Qwen2; "
        "`simulation` backend. See [docs/offsite.md](docs/offsite.md)",
    )
    bottom: int = knob(1, "`offsite`: bottom transformer layers whose adapters train")
    top: int = knob(1, "`offsite`: top transformer layers whose adapters train")
    keep: float = knob(
        0.5,
        "`offsite`: share of the middle layers the emulator keeps, in [0, 1]: "
        "`floor(keep * m + 1/2)` of the `m` middle layers, at a stride of `m / kept` from "
        "the first (0.5 keeps every other one; 1 = the full model; 0 = none)",
    )
    distill_steps: int = knob(
        0,
        "`offsite`: before round 1 the server trains copies of the kept middle layers for "
        "this many steps (batch size `client.batch_size`) to reproduce the full middle "
        "block's output (hidden-state MSE) on public text; 0 = no distillation",
    )
    distill_lr: float = knob(1e-4, "`offsite.distill_steps`: AdamW learning rate")
    distill_data: str = knob(
        "",
        "`offsite.distill_steps`: the public text: a built-in text dataset's name (e.g. "
        "`sms_spam`, `sentiment4`) or a data file's path (its `data.text_column`); required "
        "with distillation",
    )
    distill_examples: int = knob(
        1024,
        "`offsite.distill_steps`: the most public training examples used (a seeded "
        "subsample); the loss before and after is measured on up to 128 of its test split",
    )


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = knob(1, "write an atomic checkpoint every k rounds; 0 = never")


@dataclass(frozen=True)
class RunConfig:
    name: str = knob(
        "",
        "run folder name under `output_dir`; empty = "
        "`<dataset>-<model>-<adapter>-<strategy>-<partition>-s<seed>`",
    )
    seed: int = knob(
        0,
        "seeds everything: partition, model init, cohorts, batches; same seed → same "
        "metrics on CPU",
    )
    rounds: int = knob(8, "federated rounds")
    output_dir: str = knob("runs", "parent folder of run folders")
    backend: str = knob(
        "simulation",
        "the transport that carries the clients: `simulation` (in process, one client after "
        "another), `ray` (Ray actors, each holding one backbone; see [docs/ray.md](docs/ray.md)) "
        "or `remote` (clients in other processes over gRPC, as `fedfm serve` runs it)",
    )
    device: str = knob(
        "auto",
        "where the shared model computes: `auto` (CUDA if torch sees it, else CPU), `cpu`, "
        "`cuda`, `cuda:N`; params travel as CPU tensors either way",
    )
    data: DataConfig = knob(
        DataConfig, "the dataset and how it is split into clients", factory=True
    )
    model: ModelConfig = knob(ModelConfig, "the backbone", factory=True)
    adapter: AdapterConfig = knob(AdapterConfig, "which parameters train and travel", factory=True)
    client: ClientConfig = knob(ClientConfig, "local training on each client", factory=True)
    strategy: StrategyConfig = knob(
        StrategyConfig, "the federated algorithm: cohorts and the server's step", factory=True
    )
    compression: CompressionConfig = knob(
        CompressionConfig, "compression of client uploads", factory=True
    )
    system: SystemConfig = knob(
        SystemConfig,
        "resource profiles: what each simulated client can do (drawn per client, seeded)",
        factory=True,
    )
    privacy: PrivacyConfig = knob(
        PrivacyConfig, "client-level differential privacy (DP-FedAvg)", factory=True
    )
    dpsgd: DPSGDConfig = knob(
        DPSGDConfig, "sample-level differential privacy (DP-SGD, Opacus)", factory=True
    )
    secagg: SecAggConfig = knob(
        SecAggConfig, "secure aggregation: the server learns only the sum", factory=True
    )
    robust: RobustConfig = knob(RobustConfig, "Byzantine-robust aggregation", factory=True)
    attack: AttackConfig = knob(AttackConfig, "simulated malicious clients", factory=True)
    synthetic: SyntheticConfig = knob(
        SyntheticConfig, "labelled examples written by a generative FM", factory=True
    )
    remote: RemoteConfig = knob(
        RemoteConfig, "`fedfm serve`: remote clients over gRPC", factory=True
    )
    ray: RayConfig = knob(RayConfig, '`backend = "ray"`: clients train on Ray actors', factory=True)
    simulation: SimulationConfig = knob(
        SimulationConfig, '`backend = "simulation"`: how the cohort trains', factory=True
    )
    pft: PFTConfig = knob(
        PFTConfig, "`fedfm transfer pft`: one-shot FedPFT on frozen FM features", factory=True
    )
    distill: DistillConfig = knob(
        DistillConfig, "ensemble distillation between the FM and the clients' model", factory=True
    )
    split: SplitConfig = knob(
        SplitConfig, "split fine-tuning: a client computes only the bottom layers", factory=True
    )
    asynchronous: AsynchronousConfig = knob(
        AsynchronousConfig, "asynchronous rounds: FedBuff's buffered aggregation", factory=True
    )
    offsite: OffsiteConfig = knob(
        OffsiteConfig, "offsite tuning: clients train adapters on an emulator", factory=True
    )
    eval: EvalConfig = knob(EvalConfig, "evaluation of the global model", factory=True)
    checkpoint: CheckpointConfig = knob(
        CheckpointConfig, "checkpoints to resume a run from", factory=True
    )

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
    "eval.max_new_tokens",
    "eval.generate_batch_size",
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
    "simulation.parallel_clients",
    "robust.keep",
    "robust.norm_bound",
    "attack.noise_std",
    "dpsgd.noise_multiplier",
    "synthetic.ratio",
    "synthetic.examples_per_prompt",
    "remote.patience",
    "eval.generate_examples",
    "eval.generate_max_prompts",
}
_STRICTLY_POSITIVE_FLOATS = {
    "data.alpha",
    "client.lr",
    "client.dpo_beta",
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
    "adapter.method": ("lora", "ia3", "bitfit", "head", "full"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.task": ("auto", "classification", "causal_lm", "instruction", "preference"),
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
    "eval.scorer": ("label", "text"),  # fedfm.generation.SCORERS' names (a test checks)
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
    from fedfm.features import config_problems  # noqa: PLC0415 (features read this module)

    problems.extend(config_problems(flat))  # each optional feature's own rules
    problems.extend(_data_file_problems(flat))
    problems.extend(_parallel_problems(flat))
    if flat["client.epochs"] == 0 and flat["client.steps"] == 0:
        problems.append("client.epochs and client.steps are both 0: set one of them >= 1")
    return problems


def _parallel_problems(flat: dict[str, Any]) -> list[str]:
    """What ``simulation.parallel_clients`` cannot stack (:mod:`fedfm.client.parallel`)."""
    n = flat["simulation.parallel_clients"]
    if n <= 1:
        return []
    key = f"simulation.parallel_clients = {n}"
    backend, method = flat["backend"], flat["adapter.method"]
    refused = [
        (backend != "simulation", f"backend = {backend!r}", "'simulation'"),
        (method != "lora", f"adapter.method = {method!r}", "'lora'"),
        (flat["dpsgd.enabled"], "dpsgd.enabled = true", "false"),
        (flat["data.task"] == "preference", "data.task = 'preference'", "another task"),
        (flat.get("client.prefix_cache", False), "client.prefix_cache = true", "false"),
    ]
    return [
        f"{key} stacks LoRA clients in process only, but {what}: set simulation.parallel_clients "
        f"= 0 or {what.split(' = ')[0]} = {fix}"
        for bad, what, fix in refused
        if bad
    ]


def _data_file_problems(flat: dict[str, Any]) -> list[str]:
    """Column keys of a dataset file that cannot be right whatever the file holds."""
    problems = []
    if not flat["data.text_column"]:
        problems.append("data.text_column is empty: name the column that holds the text")
    names = list(flat["data.label_names"])
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        problems.append(f"data.label_names = {names} repeats {repeated}: list each class once")
    if flat["data.prompt_column"] == flat["data.response_column"]:
        problems.append(
            f"data.prompt_column and data.response_column both name column "
            f"{flat['data.prompt_column']!r}: give each its own"
        )
    chosen, rejected = flat["data.chosen_column"], flat["data.rejected_column"]
    if chosen == rejected:
        problems.append(
            f"data.chosen_column and data.rejected_column both name column {chosen!r}: give "
            "each its own"
        )
    for key, column in (("chosen_column", chosen), ("rejected_column", rejected)):
        if column == flat["data.prompt_column"]:
            problems.append(
                f"data.prompt_column and data.{key} both name column {column!r}: give each its own"
            )
    keys = ("text_column", "text_pair_column", "label_column", "group_column", "split_column")
    used = [(k, flat[f"data.{k}"]) for k in keys if flat[f"data.{k}"]]
    for i, (key, column) in enumerate(used):
        for other, same in used[i + 1 :]:
            if same == column and {key, other} != {"label_column", "group_column"}:
                problems.append(
                    f"data.{key} and data.{other} both name column {column!r}: give each its own"
                )
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
    if isinstance(value, str):  # a TOML basic string: JSON's escapes (a chat template's \n)
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
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
