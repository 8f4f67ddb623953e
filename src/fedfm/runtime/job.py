"""Everything a run needs, built once from the config: data, federation, model, task, strategy.

One frozen backbone per process serves every simulated client: a client is its indices and,
for stateful strategies, a few tensors; its params are swapped into the one model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from rich.console import Console

from fedfm.attacks import (
    DATA_ATTACKS,
    backdoor_test_set,
    concat,
    malicious_clients,
    poisoned_indices,
    poisoned_pool,
)
from fedfm.config import RunConfig
from fedfm.data.batching import Encoded, encode
from fedfm.data.federation import ClientData, Federation, build_federation, subsample
from fedfm.data.load import load_data, resolved
from fedfm.errors import ConfigError
from fedfm.models.adapters import apply_adapter, match_params
from fedfm.models.lora import rank_of
from fedfm.models.params import Params, backbone_hash, full_model_bytes, get_params
from fedfm.models.source import check_model_name
from fedfm.pipeline import Pipeline, build_pipeline
from fedfm.privacy.client_dp import ClientDP
from fedfm.resources.models import load_model
from fedfm.resources.types import CAUSAL_LM, Dataset, Split
from fedfm.runtime.profiles import ResourceProfile, sample_profiles
from fedfm.strategies import STRATEGIES, Strategy
from fedfm.strategies.reducer import Reducer
from fedfm.synthetic.dataset import SyntheticSet, synthetic_summary
from fedfm.synthetic.mix import with_synthetic
from fedfm.synthetic.warmup import server_warmup
from fedfm.tasks import TASKS, Task


@dataclass
class Job:
    cfg: RunConfig
    dataset: Dataset
    federation: Federation
    train: Encoded
    test: Encoded
    model: torch.nn.Module
    task: Task
    strategy: Strategy
    initial_params: Params
    backbone: str  # content hash of the frozen backbone
    full_model_bytes: int  # what one full-model transfer would cost
    total_params: int
    pipeline: Pipeline = field(default_factory=Pipeline)
    personal: frozenset[str] = frozenset()  # trainable tensors each client keeps to itself
    profiles: list[ResourceProfile] = field(default_factory=list)  # one per client
    lora_rank: int = 0  # the model's LoRA rank (0: no LoRA)
    dp: ClientDP | None = None  # client-level DP: budget, clip norm, noise
    malicious: frozenset[int] = frozenset()  # attacking clients ([attack])
    poison_offset: int = 0  # > 0: train[poison_offset:] is the poisoned copy of the pool
    backdoor_test: Encoded | None = None  # triggered test examples (attack success rate)
    synthetic: dict[str, Any] = field(default_factory=dict)  # the synthetic set and its use
    synthetic_set: SyntheticSet | None = None  # the set itself (a worker process needs it)
    tokenizer: Any = None  # the model's tokenizer (None for feature models)
    _base_weights: Params = field(default_factory=dict)  # frozen originals under a delta

    @property
    def causal_lm(self) -> bool:
        return self.dataset.task == CAUSAL_LM

    @property
    def rounds(self) -> int:
        """The rounds this run takes: ``cfg.rounds``, or fewer when the privacy budget stops
        it early (``privacy.over_budget = "stop"``)."""
        return min(self.cfg.rounds, self.dp.budget.rounds) if self.dp else self.cfg.rounds

    def client_indices(self, client: ClientData) -> np.ndarray:
        """A client's training indices into ``train`` (a data attacker's are poisoned)."""
        if self.poison_offset and client.id in self.malicious:
            return poisoned_indices(client.train, self.poison_offset, self.cfg.attack, client.id)
        return client.train

    @property
    def lora_scale(self) -> float:
        """LoRA's ``alpha / rank``: how much of ``B @ A`` the model adds to a frozen weight."""
        return self.cfg.adapter.alpha / self.cfg.adapter.rank

    @torch.no_grad()
    def apply_backbone_delta(self, delta: Params | None = None) -> None:
        """Set frozen weights to their original plus the strategy's ``backbone_delta`` (or
        ``delta``), scaled like LoRA (``alpha / rank``); a no-op for strategies without one."""
        delta = self.strategy.backbone_delta() if delta is None else delta
        if not delta:
            return
        named = dict(self.model.named_parameters())
        for name, d in delta.items():
            weight = named[name]
            original = self._base_weights.setdefault(name, weight.detach().clone())
            weight.copy_(original + self.lora_scale * d.to(weight.device, weight.dtype))

    def client_context(self) -> Params:
        """The server's live state that a client in another process needs besides the params
        and the payload: the strategy's backbone delta (FLoRA) and the adaptive clip norm."""
        context = dict(self.strategy.backbone_delta())
        if self.dp is not None:
            context[DP_CLIP] = torch.tensor(self.dp.clip, dtype=torch.float64)
        return context

    def adopt_context(self, context: Params) -> None:
        """Make this (client-side) job match the server's :meth:`client_context`."""
        self.apply_backbone_delta({k: v for k, v in context.items() if k != DP_CLIP})
        if self.dp is not None and DP_CLIP in context:
            self.dp.clip = float(context[DP_CLIP])


DP_CLIP = "dp_clip"  # client_context's name for the clip norm (no parameter is named so)


def _check_model_fits_data(cfg: RunConfig, dataset: Dataset) -> None:
    if dataset.modality == "features" and cfg.model.name != "mlp":
        raise ConfigError(
            f"data.dataset = '{dataset.name}' holds feature vectors, not text: "
            f"set model.name = 'mlp' (got '{cfg.model.name}')"
        )
    if dataset.modality == "text" and cfg.model.name == "mlp":
        raise ConfigError(
            f"model.name = 'mlp' takes feature vectors, but data.dataset = '{dataset.name}' is "
            "text: use model.name = 'minilm' or 'smollm2-135m'"
        )


def _check_cohort(cfg: RunConfig, cohort: int) -> None:
    """Secure aggregation and Krum need a few clients per round; refuse a cohort too small."""
    if cfg.secagg.enabled and cohort < 3:
        raise ConfigError(
            f"secagg.enabled = true needs a cohort of at least 3 (pairwise masks hide a client "
            f"only among others), got {cohort}: raise strategy.fraction or clients_per_round"
        )
    if cfg.secagg.enabled:
        needed = max(2, math.ceil(cfg.secagg.threshold * cohort))
        drops = math.floor(cfg.secagg.dropout * cohort)
        if drops > cohort - needed:
            raise ConfigError(
                f"secagg.dropout = {cfg.secagg.dropout:g} drops {drops} of a cohort of {cohort}, "
                f"but secagg.threshold = {cfg.secagg.threshold:g} needs {needed} survivors to "
                f"unmask (at most {cohort - needed} may drop): lower one of the two"
            )
    if cfg.robust.aggregator in ("krum", "multikrum") and cohort < 3:
        raise ConfigError(
            f"robust.aggregator = {cfg.robust.aggregator!r} scores each update by its distance "
            f"to the others and needs a cohort of at least 3, got {cohort}: raise "
            "strategy.fraction or strategy.clients_per_round"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = '{name}' but torch sees no CUDA device: use 'cpu' or 'auto'")
    return torch.device(name)


def build_job(cfg: RunConfig, *, synthetic: SyntheticSet | None = None, warmup: bool = True) -> Job:
    """Load data and model, partition, wrap the adapter and set up the strategy.

    Args:
        synthetic: the synthetic set of ``[synthetic]`` when the caller made it already
            (``execute`` does, to show its progress); made here, quietly, otherwise.
        warmup: run the server warm-up of ``synthetic.mode = "server_warmup"``; a worker that
            only trains clients (whose params come from the server) skips it.
    """
    check_model_name(cfg.model)  # a wrong folder costs milliseconds, not a dataset load
    dataset = load_data(cfg.data)  # a registry name, or the user's file (checked, no model yet)
    cfg = resolved(cfg, dataset)  # a file's task and label names travel with the config
    _check_model_fits_data(cfg, dataset)
    train = subsample(dataset.train, cfg.data.max_train_examples, seed=cfg.seed)
    test = subsample(dataset.test, cfg.data.max_test_examples, seed=cfg.seed)
    dataset = replace(dataset, train=train, test=test)
    federation = build_federation(train, cfg.data, seed=cfg.seed)

    if cfg.synthetic.mode != "none" and synthetic is None:
        from fedfm.synthetic.build import synthesize  # loads the generator only when needed

        synthetic = synthesize(cfg, console=Console(quiet=True))

    torch.manual_seed(cfg.seed)  # the fresh head, LoRA A matrices and random-init baselines
    input_dim = np.asarray(train.inputs).shape[1] if dataset.modality == "features" else 0
    loaded = load_model(
        cfg.model.name,
        task=dataset.task,
        num_labels=dataset.num_labels,
        pretrained=cfg.model.pretrained,
        input_dim=input_dim,
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    model = apply_adapter(
        loaded.model, cfg.adapter, architecture=loaded.architecture, task=dataset.task
    )
    model.to(resolve_device(cfg.device)).eval()
    task = TASKS.get(dataset.task)(dataset.num_labels)
    encoded_train = encode(train, loaded.tokenizer, max_length=cfg.data.max_length)
    encoded_test = encode(test, loaded.tokenizer, max_length=cfg.data.max_length)
    synthetic_info: dict[str, Any] = {}
    if synthetic is not None:
        rows = np.arange(len(encoded_train), len(encoded_train) + len(synthetic))
        written = Split(synthetic.texts, synthetic.labels)
        encoded_train = concat(
            encoded_train, encode(written, loaded.tokenizer, max_length=cfg.data.max_length)
        )
        federation = with_synthetic(
            federation, rows, mode=cfg.synthetic.mode, ratio=cfg.synthetic.ratio, seed=cfg.seed
        )
        synthetic_info = synthetic_summary(synthetic, cfg.synthetic.mode)
        if cfg.synthetic.mode == "server_warmup" and warmup:
            synthetic_info |= server_warmup(model, task, encoded_train, rows, cfg)
    params = get_params(model)
    strategy = STRATEGIES.get(cfg.strategy.name, field="strategy.name")(
        cfg.strategy, num_clients=len(federation)
    )
    strategy.initialize(params)
    personal = match_params(list(params), cfg.strategy.personal, field="strategy.personal")
    cohort = strategy.cohort_size(len(federation))
    _check_cohort(cfg, cohort)
    dp = None
    if cfg.privacy.noise != "none":
        dp = ClientDP(cfg.privacy, cohort=cohort, num_clients=len(federation), rounds=cfg.rounds)
    if dp is not None or cfg.secagg.enabled or cfg.robust != type(cfg.robust)():
        strategy.reducer = Reducer(cfg, dp=dp)
    attack = cfg.attack
    malicious = malicious_clients(len(federation), attack.fraction, cfg.seed)
    poison_offset, backdoor_test = 0, None
    if attack.kind in DATA_ATTACKS:
        pool = poisoned_pool(train, encoded_train, loaded.tokenizer, attack, dataset.num_labels)
        poison_offset = len(encoded_train)
        encoded_train = concat(encoded_train, pool)
    if attack.kind == "backdoor":
        backdoor_test = backdoor_test_set(
            test, loaded.tokenizer, attack, max_length=cfg.data.max_length
        )
    return Job(
        cfg=cfg,
        dataset=dataset,
        federation=federation,
        train=encoded_train,
        test=encoded_test,
        model=model,
        task=task,
        strategy=strategy,
        initial_params=params,
        backbone=backbone_hash(model),
        full_model_bytes=full_model_bytes(model),
        total_params=sum(p.numel() for p in model.parameters()),
        pipeline=build_pipeline(cfg, clip=dp.stage() if dp is not None else None),
        personal=personal,
        profiles=sample_profiles(len(federation), cfg.system, seed=cfg.seed),
        lora_rank=rank_of(params),
        dp=dp,
        malicious=malicious,
        poison_offset=poison_offset,
        backdoor_test=backdoor_test,
        synthetic=synthetic_info,
        synthetic_set=synthetic,
        tokenizer=loaded.tokenizer,
    )
