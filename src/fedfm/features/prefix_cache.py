"""The frozen-prefix activation cache (``client.prefix_cache``): the embeddings and the layers
below the lowest trained one run once per example, not once per example, client and round
(:mod:`fedfm.client.prefix_cache`). See ``docs/prefix-cache.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    from fedfm.client.context import ClientContext
    from fedfm.client.prefix_cache import PrefixCache
    from fedfm.runtime.job import Job

KEY = "client.prefix_cache"
MiB = 2**20


@register
class FrozenPrefix(Feature):
    """Finds ``L``, the lowest layer any client trains (its resource profile's top layers
    included), checks that the states fit ``client.prefix_cache_mb``, and hands every
    client's context the one cache."""

    name = "prefix_cache"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.cache: PrefixCache | None = None
        self.needed_bytes = 0

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.client.prefix_cache

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        if flat["client.prefix_cache_mb"] < 1:
            problems.append(
                f"client.prefix_cache_mb = {flat['client.prefix_cache_mb']!r} must be >= 1"
            )
        if not flat[KEY]:
            return problems
        method = flat["adapter.method"]
        if method in ("full", "bitfit"):
            problems.append(
                f"{KEY} = true with adapter.method = {method!r}: the embeddings train "
                f"({'every tensor' if method == 'full' else 'their bias terms'}), so nothing "
                f"frozen lies below a trained layer; use 'head', or 'lora' / 'ia3' with "
                f"system.layers, or set {KEY} = false"
            )
        if flat["data.task"] == "preference":
            problems.append(problem_preference())
        # simulation.parallel_clients > 1 is refused by config.py's own check
        return problems

    def setup(self, job: Job) -> None:
        from fedfm.client.prefix_cache import PrefixCache, states_bytes
        from fedfm.models.prefix import layer_stack

        if job.dataset.task == "preference":  # data.task = "auto" resolved from a file
            raise ConfigError(problem_preference())
        stack = layer_stack(job.model, generative=job.causal_lm)
        split = self._split(job, stack)
        dtype = next(stack.layers[0].parameters()).dtype
        self.needed_bytes = states_bytes(job.train.lengths(), stack, dtype) + states_bytes(
            job.test.lengths(), stack, dtype
        )
        max_bytes = self.cfg.client.prefix_cache_mb * MiB
        if self.needed_bytes > max_bytes:
            raise ConfigError(
                f"client.prefix_cache_mb = {self.cfg.client.prefix_cache_mb}: the states "
                f"entering layer {split} of every training and test example take "
                f"{self.needed_bytes / MiB:.0f} MiB ({len(job.train) + len(job.test)} "
                f"examples x tokens x {stack.hidden_size} x {dtype}); raise "
                f"client.prefix_cache_mb to at least {-(-self.needed_bytes // MiB)}, use "
                f"fewer examples (data.max_train_examples) or set {KEY} = false"
            )
        self.cache = PrefixCache(
            job.model, stack, split, max_bytes=max_bytes, batch_size=self.cfg.client.batch_size
        )

    def _split(self, job: Job, stack: Any) -> int:
        """``L``: the lowest layer whose tensors some client trains."""
        from fedfm.models.layers import frozen_below, layer_index
        from fedfm.models.prefix import first_trained_layer

        names = list(job.initial_params)
        system = job.feature("system")
        choices = {p.layers for p in system.profiles} if system is not None else {0}
        split = min(
            first_trained_layer([n for n in names if n not in frozen_below(names, k)], stack)
            for k in choices
        )
        if split == 0:
            lowest = next(n for n in names if layer_index(n) == 0)
            raise ConfigError(
                f"{KEY} = true, but '{lowest}' trains in layer 0: nothing frozen lies below "
                "it to cache; train only the top layers (system.layers = [k]) or the head "
                f"(adapter.method = 'head'), or set {KEY} = false"
            )
        return split

    def client_context(self, ctx: ClientContext) -> ClientContext:
        return replace(ctx, prefix=self.cache)

    def banner(self, job: Job) -> list[str]:
        if self.cache is None:
            return []
        split, layers = self.cache.split, len(self.cache.stack.layers)
        return [
            f"prefix cache: the embeddings and layers 0-{split - 1} of {layers} run once per "
            f"example ({self.needed_bytes / MiB:.0f} MiB at most)"
        ]

    def summary(self, job: Job, records: list[Record]) -> Record:
        if self.cache is None:
            return {}
        cache = self.cache
        return {
            "prefix_cache": {
                "split": cache.split,
                "mib": round(cache.nbytes / MiB, 2),
                "computed": cache.computed,
                "refills": cache.refills,
                "fill_seconds": round(cache.fill_seconds, 3),
            }
        }


def problem_preference() -> str:
    return (
        f"{KEY} = true with data.task = 'preference': a DPO example is a pair of sequences, "
        f"which the cache does not key; set {KEY} = false"
    )
