"""Split fine-tuning (``[split]``; SplitFed v1, Thapa et al., AAAI 2022): a weak client
computes only the embeddings and layers ``0..k-1``; the server runs layers ``k..`` and the
head on the activations the client sends, computes the loss, and sends back the gradient
of those activations.

One local step is the protocol's three halves in order, instead of one forward and
backward on the whole model::

    client_forward(batch)            → activations (B, T, hidden), attention mask, labels   ↑
    server_step(task, activations)   → loss, gradient of the activations (B, T, hidden)     ↓
    client_backward(gradient)          the client's tensors below layer k get their gradients

The server receives the activations as a leaf (``detach().requires_grad_()``), exactly as
they arrive, so its backward stops there; the client continues the backward from the
gradient it receives. With no noise (``split.noise = 0``) and no bound (``split.clip = 0``)
the loss and every trainable tensor's gradient are the whole model's, to float rounding:
the client's forward is the whole model's forward stopped at layer ``k``
(:func:`fedfm.models.prefix.prefix_states`), the server's is the whole model's forward from
layer ``k`` (:func:`fedfm.models.prefix.suffix_only`), and dropout draws its masks in the
same order. Both halves' trainable tensors step with the client's one optimiser; the
server-side tensors' delta stays at the server and is averaged with the rest (v1).

Bytes are the exact safetensors payload sizes of what travels
(:func:`fedfm.models.params.payload_bytes`): up, the activations, the attention mask and
the labels (the server computes the loss, so it needs them); down, the gradient of the
activations (none when the client's part is frozen, ``split.client_trains = false``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from fedfm.data.batching import Batch
from fedfm.models.layers import layer_index
from fedfm.models.params import Params, payload_bytes
from fedfm.models.prefix import LayerStack, prefix_states, suffix_only
from fedfm.tasks import Task

SPLIT_STREAM = 2**21  # client_seed stream of the noise a client adds to its activations


def client_side(names: Iterable[str], stack: LayerStack, layers: int) -> frozenset[str]:
    """The tensors of ``names`` that a client cut at layer ``layers`` computes: those of the
    embeddings and of layers ``0..layers-1``; the rest (layers ``layers..``, final norm,
    pooler, head) are the server's.

    Example:
        >>> stack = LayerStack(torch.nn.ModuleList([torch.nn.Identity()] * 3),
        ...                    torch.nn.Identity(), True, frozenset({"embeddings"}), 8)
        >>> sorted(client_side(["bert.encoder.layer.0.q.lora_A", "bert.encoder.layer.1.q",
        ...                     "classifier.weight"], stack, 1))
        ['bert.encoder.layer.0.q.lora_A']
    """
    out = set()
    for name in names:
        index = layer_index(name)
        if (index is not None and index < layers) or stack.below & set(name.split(".")):
            out.add(name)
    return frozenset(out)


@dataclass(frozen=True)
class Sent:
    """What a client sends up for one step, as it travels: the activations entering layer
    ``k`` ``(B, T, hidden)`` (clipped and noised as configured), the attention mask
    ``(B, T)`` and the labels (``(B,)`` class ids, or a causal LM's ``(B, T)`` token ids:
    the text itself); ``wants_grad``: whether the client awaits the gradient (a header
    bit, not counted)."""

    activations: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    wants_grad: bool = False

    def payload(self) -> Params:
        return {
            "activations": self.activations,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
        }


@dataclass(frozen=True)
class SplitModel:
    """The shared model cut at layer ``layers``, and which trainable tensor each side holds.

    Attributes:
        model: the shared model (a peft wrapper or not).
        stack: its layers (:func:`fedfm.models.prefix.layer_stack`).
        layers: ``k``, the client computes the embeddings and layers ``0..k-1``.
        client_trains: the client's tensors train on the gradient sent down; ``False``: they
            are frozen and no gradient is sent.
        noise: stddev of the Gaussian noise added to every activation before it is sent.
        clip: bound on each example's activation L2 norm (its real tokens) before the noise
            (0: none).
        client_side: trainable tensors the client computes (below layer ``k``).
        server_side: trainable tensors the server computes and keeps: their delta is averaged
            at the server and never travels.

    Example:
        >>> split = job.feature("split").split  # doctest: +SKIP
        >>> step = split.session(seed=7)  # doctest: +SKIP
        >>> sent = step.client_forward(batch)  # doctest: +SKIP
        >>> loss, grad = step.server_step(task, sent)  # doctest: +SKIP
        >>> step.client_backward(grad)  # both halves' gradients are in .grad  # doctest: +SKIP
    """

    model: torch.nn.Module
    stack: LayerStack
    layers: int
    client_trains: bool
    noise: float
    clip: float
    client_side: frozenset[str]
    server_side: frozenset[str]

    @property
    def frozen(self) -> frozenset[str]:
        """Trainable tensors that no client trains (the client's part, when it is frozen)."""
        return frozenset() if self.client_trains else self.client_side

    def session(self, seed: int) -> SplitStep:
        """One client's local training: its noise seeded by ``seed``, its bytes counted."""
        return SplitStep(self, torch.Generator().manual_seed(seed) if self.noise > 0 else None)


@dataclass
class SplitStep:
    """One client's local steps under the split: the protocol's halves, and the bytes each
    step sent up and down."""

    split: SplitModel
    generator: torch.Generator | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    steps: int = 0
    client_seconds: float = 0.0  # wall time of the client's halves (forward and backward)
    _graph: torch.Tensor | None = field(default=None, repr=False)  # the client's, awaiting

    def client_forward(self, batch: Batch) -> Sent:
        """The client's half: the embeddings and layers ``0..k-1`` on ``batch``'s
        ``input_ids`` (autograd graph kept when the client trains), the per-example bound
        and the noise; returns what it sends, detached from its graph."""
        split = self.split
        mask = batch["attention_mask"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        states = prefix_states(
            split.model, split.stack, split.layers, inputs, grad=split.client_trains
        )  # (B, T, hidden)
        if split.clip > 0:
            states = bounded(states, mask, split.clip)
        if self.generator is not None:
            noise = torch.randn(states.shape, generator=self.generator, dtype=torch.float32)
            states = states + split.noise * noise.to(states.device, states.dtype)
        # no graph when the client's part is frozen, or all its tensors are for this client
        # (system.layers): then no gradient need come down
        self._graph = states if states.requires_grad else None
        sent = Sent(states.detach(), mask, batch["labels"], wants_grad=self._graph is not None)
        self.bytes_up += payload_bytes(sent.payload())
        return sent

    def server_step(self, task: Task, sent: Sent) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The server's half: layers ``k..`` and the head on the activations as received (a
        leaf), the task's loss and its backward (the server-side tensors' gradients
        accumulate in place); returns the loss and the gradient of the activations to send
        down (``None`` when the client's part is frozen: it does not ask for one)."""
        split = self.split
        received = sent.activations.detach().requires_grad_(sent.wants_grad)
        batch = {
            "inputs_embeds": received,
            "attention_mask": sent.attention_mask,
            "labels": sent.labels,
        }
        with suffix_only(split.stack, split.layers):
            loss = task.loss(split.model, batch)
        loss.backward()
        if not sent.wants_grad:
            return loss.detach(), None
        grad = received.grad
        assert grad is not None  # a leaf that requires grad and reaches the loss
        self.bytes_down += payload_bytes({"grad": grad})
        return loss.detach(), grad

    def client_backward(self, grad: torch.Tensor) -> None:
        """The client's backward from the gradient it received: its tensors below layer
        ``k`` get their gradients (through the bound and the noise)."""
        if self._graph is None:
            raise RuntimeError("client_backward without a client_forward that kept its graph")
        graph, self._graph = self._graph, None
        graph.backward(grad)

    def step(self, task: Task, batch: Batch) -> torch.Tensor:
        """One local step's forward and backward, the three halves in order; the gradients
        of both halves' trainable tensors are in their ``.grad`` afterwards. Returns the
        loss (detached)."""
        started = time.perf_counter()
        sent = self.client_forward(batch)
        sent_at = time.perf_counter()
        loss, grad = self.server_step(task, sent)
        received_at = time.perf_counter()
        if grad is not None:
            self.client_backward(grad)
        self.client_seconds += (sent_at - started) + (time.perf_counter() - received_at)
        self.steps += 1
        return loss

    def metrics(self) -> dict[str, float]:
        """The bytes this client's steps sent (``split_bytes_up``, ``split_bytes_down``) and
        the seconds its own halves took (``split_client_seconds``)."""
        return {
            "split_bytes_up": float(self.bytes_up),
            "split_bytes_down": float(self.bytes_down),
            "split_client_seconds": self.client_seconds,
        }


def bounded(states: torch.Tensor, mask: torch.Tensor, clip: float) -> torch.Tensor:
    """``states`` ``(B, T, hidden)`` with each example's L2 norm over its real tokens
    (``mask`` 1) scaled down to at most ``clip``.

    Example:
        >>> states = torch.tensor([[[3.0, 4.0], [9.0, 9.0]]])  # norm 5 over the real token
        >>> bounded(states, torch.tensor([[1, 0]]), 1.0)[0, 0].tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    real = states * mask.unsqueeze(-1).to(states.dtype)
    norms = real.flatten(1).norm(dim=1)  # (B,)
    scale = (clip / norms.clamp(min=1e-12)).clamp(max=1.0)
    return states * scale[:, None, None].to(states.dtype)
