"""Everything a run needs, built once from the config: data, federation, model, task, strategy.

One frozen backbone per process serves every simulated client: a client is its indices and,
for stateful strategies, a few tensors; its params are swapped into the one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedfm.config import RunConfig
from fedfm.data.batching import Encoded, encode
from fedfm.data.federation import Federation, build_federation, subsample
from fedfm.errors import ConfigError
from fedfm.models.adapters import apply_adapter, match_params
from fedfm.models.lora import rank_of
from fedfm.models.params import Params, backbone_hash, full_model_bytes, get_params
from fedfm.pipeline import Pipeline, build_pipeline
from fedfm.resources.datasets import load_dataset
from fedfm.resources.models import load_model
from fedfm.resources.types import CAUSAL_LM, Dataset
from fedfm.runtime.profiles import ResourceProfile, sample_profiles
from fedfm.strategies import STRATEGIES, Strategy
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
    _base_weights: Params = field(default_factory=dict)  # frozen originals under a delta

    @property
    def causal_lm(self) -> bool:
        return self.dataset.task == CAUSAL_LM

    @property
    def lora_scale(self) -> float:
        """LoRA's ``alpha / rank``: how much of ``B @ A`` the model adds to a frozen weight."""
        return self.cfg.adapter.alpha / self.cfg.adapter.rank

    @torch.no_grad()
    def apply_backbone_delta(self) -> None:
        """Set frozen weights to their original plus the strategy's ``backbone_delta`` (scaled
        like LoRA, ``alpha / rank``); a no-op for strategies without one."""
        delta = self.strategy.backbone_delta()
        if not delta:
            return
        named = dict(self.model.named_parameters())
        for name, d in delta.items():
            weight = named[name]
            original = self._base_weights.setdefault(name, weight.detach().clone())
            weight.copy_(original + self.lora_scale * d.to(weight.device, weight.dtype))


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


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = '{name}' but torch sees no CUDA device: use 'cpu' or 'auto'")
    return torch.device(name)


def build_job(cfg: RunConfig) -> Job:
    """Load data and model, partition, wrap the adapter and set up the strategy."""
    dataset = load_dataset(cfg.data.dataset)
    _check_model_fits_data(cfg, dataset)
    train = subsample(dataset.train, cfg.data.max_train_examples, seed=cfg.seed)
    test = subsample(dataset.test, cfg.data.max_test_examples, seed=cfg.seed)
    dataset = Dataset(
        dataset.name, dataset.task, train, test, dataset.label_names, dataset.modality
    )
    federation = build_federation(train, cfg.data, seed=cfg.seed)

    torch.manual_seed(cfg.seed)  # the fresh head, LoRA A matrices and random-init baselines
    input_dim = np.asarray(train.inputs).shape[1] if dataset.modality == "features" else 0
    loaded = load_model(
        cfg.model.name,
        task=dataset.task,
        num_labels=dataset.num_labels,
        pretrained=cfg.model.pretrained,
        input_dim=input_dim,
    )
    model = apply_adapter(
        loaded.model, cfg.adapter, architecture=loaded.architecture, task=dataset.task
    )
    model.to(resolve_device(cfg.device)).eval()
    params = get_params(model)
    strategy = STRATEGIES.get(cfg.strategy.name, field="strategy.name")(
        cfg.strategy, num_clients=len(federation)
    )
    strategy.initialize(params)
    personal = match_params(list(params), cfg.strategy.personal, field="strategy.personal")
    return Job(
        cfg=cfg,
        dataset=dataset,
        federation=federation,
        train=encode(train, loaded.tokenizer, max_length=cfg.data.max_length),
        test=encode(test, loaded.tokenizer, max_length=cfg.data.max_length),
        model=model,
        task=TASKS.get(dataset.task)(dataset.num_labels),
        strategy=strategy,
        initial_params=params,
        backbone=backbone_hash(model),
        full_model_bytes=full_model_bytes(model),
        total_params=sum(p.numel() for p in model.parameters()),
        pipeline=build_pipeline(cfg),
        personal=personal,
        profiles=sample_profiles(len(federation), cfg.system, seed=cfg.seed),
        lora_rank=rank_of(params),
    )
