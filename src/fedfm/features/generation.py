"""Evaluation by generation (``eval.generate``): the model's greedy responses to held-out
prompts of an instruction dataset, scored against the reference responses
(:mod:`fedfm.generation`), and a table of generated examples in the run folder.

Every evaluated round records, with ``<m>`` the main metric of ``eval.scorer`` (``rouge_l``
for ``text``, ``accuracy`` for ``label``):

- the global model on the global test set (a seeded subset when
  ``eval.generate_max_prompts`` > 0): ``test_gen_<metric>`` for each metric of the scorer,
  the main one first, and ``test_gen_<m>_by_task`` ({category name: score}) when the
  dataset names its rows' categories (``label_names``: the ``instruct`` tasks); not for a
  personalised run, which has no global model; instead, each client's own model on the
  same test prompts: ``local_test_gen_<m>_mean``, ``_worst10`` and ``_by_task`` (each
  task's score averaged over clients);
- with ``eval.per_client`` or a personalised strategy, each client's model (its own params)
  on its own held-out split (at most ``eval.generate_max_prompts`` of it):
  ``client_gen_<m>_mean``, ``client_gen_<m>_worst10`` and ``per_client_gen_<m>`` ([client
  id, score] pairs), as :func:`~fedfm.runtime.simulation.evaluate_clients` does for the
  task's own metric.

At the end of the run, ``generations.md`` shows ``eval.generate_examples`` test examples (the
first of each category in turn, :func:`first_of_each`): prompt, reference, the final global
model's response and client 0's own model's when the run is personalised
(``strategy.name = "local"``: a local-only model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, Record, register
from fedfm.resources.types import INSTRUCTION, Conversation, Split

if TYPE_CHECKING:
    from fedfm.generation import Scores
    from fedfm.models.params import Params
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundState

PROMPT_STREAM = 2**22  # seed stream of the prompt subsets (eval.generate_max_prompts)


@dataclass(frozen=True)
class HeldOut:
    """Held-out examples to generate for.

    Attributes:
        prompts: each conversation without its last message.
        references: each last message's content (the reference response).
        categories: int64 ``(N,)`` category (task) id per example, or ``None``.
    """

    prompts: list[Conversation]
    references: list[str]
    categories: np.ndarray | None = None


def held_out(split: Split, indices: np.ndarray) -> HeldOut:
    """The examples ``indices`` of an instruction ``split`` as prompts and references."""
    from fedfm.generation import split_references

    conversations = cast(list[Conversation], split.inputs)
    prompts, references = split_references([conversations[i] for i in indices.tolist()])
    categories = None if split.labels is None else split.labels[indices]
    return HeldOut(prompts, references, categories)


def seeded_subset(indices: np.ndarray, limit: int, seed: Sequence[int]) -> np.ndarray:
    """At most ``limit`` of ``indices`` (all of them when ``limit`` is 0), drawn by
    ``seed``, in their original order."""
    if limit <= 0 or limit >= len(indices):
        return indices
    rng = np.random.default_rng(list(seed))
    return np.sort(rng.choice(indices, size=limit, replace=False))


def first_of_each(categories: np.ndarray | None, count: int) -> np.ndarray:
    """``count`` example indices taken round-robin over the categories (the first example
    of each category, then the second of each, ...), in category order: a table of
    examples that shows every task. Without categories: the first ``count``.

    Example:
        >>> first_of_each(np.array([0, 0, 0, 1, 1, 2]), 4).tolist()
        [0, 3, 5, 1]
    """
    if categories is None:
        return np.arange(count)
    queues = [np.flatnonzero(categories == c).tolist() for c in np.unique(categories)]
    order: list[int] = []
    while len(order) < count and any(queues):
        order += [q.pop(0) for q in queues if q]
    return np.asarray(order[:count], dtype=np.int64)


def client_params(job: Job, state: RoundState, client_id: int) -> Params:
    """The params client ``client_id`` is evaluated with: ``strategy.personal_params`` (the
    global params unless the strategy is personalised) with its own tensors in place."""
    from fedfm.client.fit import with_personal

    shared = job.strategy.personal_params(
        state.global_params, state.client_states.get(client_id, {})
    )
    return with_personal(shared, state.personal.get(client_id, {}))


@register
class Generation(Feature):
    name = "generation"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.test = HeldOut([], [])  # the global test set (or its seeded subset)
        self.clients: dict[int, HeldOut] = {}  # each client's held-out split (or a subset)
        self.template = ""  # the chat template the data was encoded with

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.eval.generate

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        task = flat["data.task"]
        if flat["eval.generate"] and task not in ("auto", INSTRUCTION):
            return [
                "eval.generate = true scores the responses generated to an instruction "
                f"dataset's prompts, but data.task = {task!r}: set eval.generate = false, or "
                "use an instruction dataset (data.task = 'instruction')"
            ]
        return []

    def prepare(self, job: Job) -> None:
        """Refuse a dataset that is not an instruction one (a registry dataset's task is
        known only once loaded); pick the prompts every evaluation generates for."""
        if job.dataset.task != INSTRUCTION:
            raise ConfigError(
                "eval.generate = true scores the responses generated to an instruction "
                f"dataset's prompts, but data.dataset = {job.cfg.data.dataset!r} is a "
                f"{job.dataset.task} dataset: set eval.generate = false, or use an "
                "instruction dataset (e.g. data.dataset = 'instruct')"
            )
        from fedfm.data.chat import resolve_template

        cfg = self.cfg
        limit, seed = cfg.eval.generate_max_prompts, (cfg.seed, PROMPT_STREAM)
        test = job.dataset.test
        self.test = held_out(test, seeded_subset(np.arange(len(test)), limit, seed))
        self.clients = {
            c.id: held_out(job.dataset.train, seeded_subset(c.eval, limit, (*seed, c.id)))
            for c in job.federation.clients
            if len(c.eval) > 0
        }
        self.template = resolve_template(job.tokenizer, cfg.model.chat_template)

    # ------------------------------------------------------------------ rounds
    def evaluate(self, job: Job, state: RoundState) -> Record:
        # Each evaluation loads the params it scores (set_params), as evaluate_global and
        # evaluate_clients do, and so does the next client's training: nothing to restore.
        from fedfm.models.params import set_params

        record: Record = {}
        if not job.strategy.personalized and self.test.prompts:
            set_params(job.model, state.global_params)
            record.update(self._test_scores(job))
        if job.strategy.personalized and self.test.prompts:
            record.update(self._local_test_scores(job, state))
        if self.cfg.eval.per_client or job.strategy.personalized:
            record.update(self._client_scores(job, state))
        return record

    def _test_scores(self, job: Job) -> Record:
        """The loaded model's ``test_gen_*`` entries."""
        scores = self._score(job, self.test)
        means = scores.means()
        main = scores.main
        record: Record = {f"test_gen_{main}": means.pop(main)}
        record.update({f"test_gen_{k}": v for k, v in means.items()})
        by_task = self._by_task(job, scores.per_example[main])
        if by_task:
            record[f"test_gen_{main}_by_task"] = by_task
        return record

    def _by_task(self, job: Job, values: Sequence[float]) -> dict[str, float]:
        """``{category name: mean}`` of per-example test ``values`` ({} without categories)."""
        names, categories = job.dataset.label_names, self.test.categories
        if not names or categories is None:
            return {}
        array = np.asarray(values, dtype=np.float64)
        return {
            name: float(array[categories == i].mean())
            for i, name in enumerate(names)
            if np.any(categories == i)
        }

    def _local_test_scores(self, job: Job, state: RoundState) -> Record:
        """A personalised run's models on the *global* test prompts: what a client's own
        model does on the whole distribution, not only on its own data (a local-only client
        never saw the other clients' tasks). ``local_test_gen_<m>_mean`` and ``_worst10``
        over clients, and ``_by_task``: each task's score averaged over clients."""
        from fedfm.generation import per_client_scores
        from fedfm.models.params import set_params

        values: dict[int, list[float]] = {}
        tasks: list[dict[str, float]] = []
        main = ""
        for client in job.federation.clients:
            set_params(job.model, client_params(job, state, client.id))
            scores = self._score(job, self.test)
            main, values[client.id] = scores.main, scores.per_example[scores.main]
            tasks.append(self._by_task(job, values[client.id]))
        spread = per_client_scores(values)
        record: Record = {
            f"local_test_gen_{main}_mean": spread["mean"],
            f"local_test_gen_{main}_worst10": spread["worst10"],
        }
        if tasks and tasks[0]:
            record[f"local_test_gen_{main}_by_task"] = {
                name: float(np.mean([t[name] for t in tasks])) for name in tasks[0]
            }
        return record

    def _client_scores(self, job: Job, state: RoundState) -> Record:
        """Each client's model on its own held-out prompts: mean, worst 10%, each client."""
        from fedfm.generation import client_means, per_client_scores
        from fedfm.models.params import set_params

        values: dict[int, list[float]] = {}
        main, loaded = "", None
        for client_id, examples in self.clients.items():
            params = client_params(job, state, client_id)
            if params is not loaded:  # the global params are swapped in once, not per client
                set_params(job.model, params)
                loaded = params
            scores = self._score(job, examples)
            main, values[client_id] = scores.main, scores.per_example[scores.main]
        spread = per_client_scores(values)
        if not spread:
            return {}
        return {
            f"client_gen_{main}_mean": spread["mean"],
            f"client_gen_{main}_worst10": spread["worst10"],
            f"per_client_gen_{main}": [[c, v] for c, v in client_means(values).items()],
        }

    def _score(self, job: Job, examples: HeldOut) -> Scores:
        from fedfm.generation import SCORERS

        outputs = self._generate(job, examples.prompts)
        return SCORERS.get(self.cfg.eval.scorer, field="eval.scorer")(outputs, examples.references)

    def _generate(self, job: Job, prompts: Sequence[Conversation]) -> list[str]:
        """The loaded model's greedy responses to ``prompts``."""
        from fedfm.generation import generate

        cfg = self.cfg
        return generate(
            job.model,
            job.tokenizer,
            prompts,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.generate_batch_size,
            system_prompt=cfg.data.system_prompt,
            chat_template=self.template,
        )

    # ------------------------------------------------------------------ the end
    def finish(self, job: Job, state: RoundState, run_dir: Path) -> None:
        """``generations.md``: the first ``eval.generate_examples`` test examples with the
        final global model's response (none for a personalised run) and, for a
        personalised run, client 0's own model's."""
        count = min(self.cfg.eval.generate_examples, len(job.dataset.test))
        if count == 0:
            return
        from fedfm.generation import SampleRow, prompt_text, write_samples
        from fedfm.generation.report import MISSING
        from fedfm.models.params import set_params

        examples = held_out(job.dataset.test, first_of_each(job.dataset.test.labels, count))
        global_model = [MISSING] * count
        local_model: list[str | None] = [None] * count
        if job.strategy.personalized:  # no global model; each client has its own
            first = job.federation.clients[0].id
            set_params(job.model, client_params(job, state, first))
            local_model = list(self._generate(job, examples.prompts))
        else:
            set_params(job.model, state.global_params)
            global_model = self._generate(job, examples.prompts)
        rows = [
            SampleRow(prompt_text(p), r, g, loc)
            for p, r, g, loc in zip(
                examples.prompts, examples.references, global_model, local_model, strict=True
            )
        ]
        write_samples(run_dir, rows, heading=f"Generated examples after round {state.round}")
