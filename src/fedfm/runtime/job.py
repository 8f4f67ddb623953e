"""Everything a run needs, built once from the config: data, federation, model, task, strategy,
the update chain, and the optional features the config switches on.

One frozen backbone per process serves every simulated client: a client is its indices and,
for stateful strategies, a few tensors; its params are swapped into the one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from fedfm.client.context import ClientContext
from fedfm.client.trainer import OPTIMIZERS
from fedfm.config import RunConfig
from fedfm.data.batching import Encoded, encode
from fedfm.data.chat import encode_chat, resolve_template
from fedfm.data.federation import Federation, build_federation, subsample
from fedfm.data.load import load_data, resolved
from fedfm.data.preference import encode_pairs
from fedfm.errors import ConfigError
from fedfm.features import Feature, start_features
from fedfm.models.adapters import apply_adapter
from fedfm.models.init_adapter import init_params
from fedfm.models.lora import rank_of
from fedfm.models.params import (
    Params,
    backbone_hash,
    full_model_bytes,
    get_params,
    set_params,
    trainable_parameters,
)
from fedfm.models.source import check_model_name
from fedfm.privacy.client_dp import ClientDP
from fedfm.resources.models import load_model
from fedfm.resources.types import INSTRUCTION, PREFERENCE, Dataset, Split, is_generative
from fedfm.strategies import STRATEGIES, Strategy
from fedfm.synthetic.dataset import SyntheticSet
from fedfm.tasks import TASKS, Task
from fedfm.update.chain import Chain, build_chain
from fedfm.update.compat import check_compatibility


@dataclass
class Job:
    """The core of a run; the optional features keep their own state (:attr:`features`).

    The fields after ``features`` are set once the strategy exists (:func:`build_job`).
    """

    cfg: RunConfig
    dataset: Dataset
    federation: Federation
    train: Encoded
    test: Encoded
    model: torch.nn.Module
    task: Task
    tokenizer: Any  # the model's tokenizer (None for feature models)
    features: tuple[Feature, ...] = ()  # the active ones, in registration order
    strategy: Strategy = field(init=False)
    initial_params: Params = field(init=False)
    pipeline: Chain = field(init=False)  # the update chain
    backbone: str = field(init=False)  # content hash of the frozen backbone (as loaded)
    _base_weights: Params = field(default_factory=dict)  # frozen originals under a delta

    def feature(self, name: str) -> Any:
        """The active feature called ``name`` (see :mod:`fedfm.features`), or ``None``."""
        return next((f for f in self.features if f.name == name), None)

    @cached_property
    def live(self) -> dict[str, torch.nn.Parameter]:
        """The model's trainable tensors (:func:`trainable_parameters`), walked once: which
        tensors train is settled when the job is built (every client's round reads this)."""
        return trainable_parameters(self.model)

    @cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """One ``client.optimizer`` over :attr:`live`, reused by every client round in this
        process (its state cleared before and after each: a fresh optimizer's) instead of
        one built per client round."""
        return OPTIMIZERS[self.cfg.client.optimizer](list(self.live.values()), self.cfg.client)

    @cached_property
    def full_model_bytes(self) -> int:
        """What one full-model transfer would cost."""
        return full_model_bytes(self.model)

    @cached_property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def lora_rank(self) -> int:
        """The model's LoRA rank (0: no LoRA)."""
        return rank_of(self.initial_params)

    @property
    def personal(self) -> frozenset[str]:
        """Trainable tensors each client keeps to itself (``strategy.personal``)."""
        found = self.feature("personal")
        return found.names if found is not None else frozenset()

    @property
    def server_side(self) -> frozenset[str]:
        """Trainable tensors the server computes and keeps under split fine-tuning
        (``split.enabled``): never sent to a client, their delta never sent up."""
        found = self.feature("split")
        return found.server_side if found is not None else frozenset()

    @property
    def dp(self) -> ClientDP | None:
        """Client-level DP's budget, clip norm and noise (``[privacy]``), or ``None``."""
        found = self.feature("client_dp")
        return found.dp if found is not None else None

    @property
    def causal_lm(self) -> bool:
        """Whether batches are next-token prediction (labels from the ids): every
        generative task's."""
        return is_generative(self.dataset.task)

    @property
    def rounds(self) -> int:
        """The rounds this run takes: ``cfg.rounds``, or fewer when a feature stops it early
        (the privacy budget, ``privacy.over_budget = "stop"``)."""
        allowed = [f.rounds_allowed() for f in self.features]
        return min([self.cfg.rounds, *(r for r in allowed if r is not None)])

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

    def client_context(self) -> ClientContext:
        """The narrow view of this job that local training reads (:mod:`fedfm.client`)."""
        cfg = self.cfg
        ctx = ClientContext(
            model=self.model,
            task=self.task,
            strategy=self.strategy,
            pipeline=self.pipeline,
            train=self.train,
            causal_lm=self.causal_lm,
            seed=cfg.seed,
            client=cfg.client,
            dpsgd=cfg.dpsgd,
            personal=self.personal,
            indices=lambda client: client.train,
            live=self.live,
            optimizer=self.optimizer,
            # a personalised run trains with the plain loss: each client's own model, or
            # its own tensors, serves that client's own labels, prior included
            balanced=cfg.client.loss == "balanced" and not self.strategy.personalized,
        )
        for feature in self.features:
            ctx = feature.client_context(ctx)
        return ctx

    def broadcast(self) -> Params:
        """The server's live state that a client in another process needs besides the params
        and the payload: the strategy's backbone delta (FLoRA) and the adaptive clip norm."""
        context = dict(self.strategy.backbone_delta())
        if self.dp is not None:
            context[DP_CLIP] = torch.tensor(self.dp.clip, dtype=torch.float64)
        return context

    def adopt_broadcast(self, context: Params) -> None:
        """Make this (client-side) job match the server's :meth:`broadcast`."""
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


PEFT_METHODS = ("lora", "ia3")  # adapters peft can switch off (DPO's reference model)


def _check_task_fits(cfg: RunConfig, dataset: Dataset) -> None:
    """Refuse what a preference (DPO) run cannot do: a reference model without an adapter
    to switch off, and DP-SGD, whose per-example clipping would see a pair's two rows."""
    if dataset.task != PREFERENCE:
        return
    if cfg.adapter.method not in PEFT_METHODS:
        raise ConfigError(
            f"data.task = 'preference' (DPO) scores a frozen reference model, which is the "
            f"backbone with the adapter switched off, but adapter.method = "
            f"{cfg.adapter.method!r} has no adapter to switch off (and a second copy of the "
            "model is not kept in memory): set adapter.method = 'lora' or 'ia3'"
        )
    if cfg.dpsgd.enabled:
        raise ConfigError(
            "dpsgd.enabled = true with data.task = 'preference': DP-SGD clips each batch row, "
            "but a DPO example is a pair of rows (its chosen and rejected responses), so "
            "its guarantee would not cover a pair: set dpsgd.enabled = false and use "
            "client-level DP (privacy.noise) instead"
        )


def _checkpoint_activations(model: torch.nn.Module, cfg: RunConfig) -> None:
    """``client.gradient_checkpointing``: the transformer recomputes its layers' activations
    in the backward pass (non-reentrant, so the frozen backbone's inputs need no grad)."""
    kwargs = {"use_reentrant": False}
    enable: Any = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5
    legacy: Any = getattr(model, "gradient_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    elif legacy is not None:
        legacy(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError(
            f"client.gradient_checkpointing = true, but model.name = {cfg.model.name!r} is not a "
            "Hugging Face transformer: set client.gradient_checkpointing = false"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = '{name}' but torch sees no CUDA device: use 'cpu' or 'auto'")
    return torch.device(name)


def encode_split(split: Split, tokenizer: Any, *, task: str, cfg: RunConfig) -> Encoded:
    """Tokenise ``split`` for ``task``: an instruction's conversations and a preference
    task's pairs through the chat template (``model.chat_template``, ``data.system_prompt``)
    with their loss masks, anything else with :func:`~fedfm.data.batching.encode`."""
    chat = {INSTRUCTION: encode_chat, PREFERENCE: encode_pairs}.get(task)
    if chat is None:
        return encode(split, tokenizer, max_length=cfg.data.max_length)
    return chat(
        split,
        tokenizer,
        max_length=cfg.data.max_length,
        chat_template=cfg.model.chat_template,
        system_prompt=cfg.data.system_prompt,
    )


def build_job(cfg: RunConfig, *, synthetic: SyntheticSet | None = None, warmup: bool = True) -> Job:
    """Load data and model, partition, wrap the adapter, set up the strategy, the update
    chain and the active features.

    Args:
        synthetic: the synthetic set of ``[synthetic]`` when the caller made it already
            (``execute`` does, to show its progress); made here, quietly, otherwise.
        warmup: build the server's job: run the server warm-up of ``synthetic.mode =
            "server_warmup"`` and start from ``model.init_adapter``'s params; a worker that
            only trains clients (whose params come from the server) skips both.
    """
    check_model_name(cfg.model)  # a wrong folder costs milliseconds, not a dataset load
    strategy_class = STRATEGIES.get(cfg.strategy.name, field="strategy.name")
    check_compatibility(cfg, strategy_class)
    dataset = load_data(cfg.data)  # a registry name, or the user's file (checked, no model yet)
    cfg = resolved(cfg, dataset)  # a file's task and label names travel with the config
    _check_model_fits_data(cfg, dataset)
    _check_task_fits(cfg, dataset)
    train = subsample(dataset.train, cfg.data.max_train_examples, seed=cfg.seed)
    test = subsample(dataset.test, cfg.data.max_test_examples, seed=cfg.seed)
    dataset = replace(dataset, train=train, test=test)
    federation = build_federation(train, cfg.data, seed=cfg.seed)
    features = start_features(cfg, synthetic=synthetic, warmup=warmup)

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
    if dataset.task in (INSTRUCTION, PREFERENCE) and loaded.tokenizer is not None:
        # the export's tokenizer carries the template the run trained with
        template = resolve_template(loaded.tokenizer, cfg.model.chat_template)
        loaded.tokenizer.chat_template = template
    model = apply_adapter(
        loaded.model, cfg.adapter, architecture=loaded.architecture, task=dataset.task
    )
    model.to(resolve_device(cfg.device)).eval()
    if cfg.client.gradient_checkpointing:
        _checkpoint_activations(model, cfg)
    if cfg.model.init_adapter and warmup:  # another run's final params (SFT before DPO)
        backbone = backbone_hash(model)
        set_params(model, init_params(cfg.model.init_adapter, get_params(model), backbone=backbone))
    job = Job(
        cfg=cfg,
        dataset=dataset,
        federation=federation,
        train=encode_split(train, loaded.tokenizer, task=dataset.task, cfg=cfg),
        test=encode_split(test, loaded.tokenizer, task=dataset.task, cfg=cfg),
        model=model,
        task=TASKS.get(dataset.task).from_config(cfg, dataset.num_labels),
        tokenizer=loaded.tokenizer,
        features=features,
    )
    for feature in features:  # synthetic examples, a warm-up, poisoned copies
        feature.prepare(job)
    job.initial_params = params = get_params(model)
    job.strategy = strategy_class(cfg.strategy, num_clients=len(job.federation))
    job.strategy.initialize(params)
    for feature in features:  # what depends on the cohort
        feature.setup(job)
    job.pipeline = build_chain(cfg, dp=job.dp)
    job.backbone = backbone_hash(model)
    return job
