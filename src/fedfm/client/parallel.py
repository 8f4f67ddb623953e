"""Several clients trained together on one frozen backbone (``simulation.parallel_clients``).

A LoRA client differs from the next only in its adapter tensors, so ``C`` clients can share
one forward and one backward: each client's trainable tensors are stacked along a leading
client axis (``A``: ``(C, r, in)``, ``B``: ``(C, out, r)``, the head's ``(C, K, H)``), the
``C`` batches are concatenated client-major into one batch of ``N`` rows, and every adapted
module applies client ``c``'s tensors to client ``c``'s rows by a batched matrix product
over the client axis (rows spread into ``(C, width, ...)``, zeros where a client has fewer)::

    x: (N, T, in) -> (C, width*T, in);  y = base(x) + scale * (x @ A_c^T) @ B_c^T

The frozen backbone's rows never mix (no batch norm), so the stacked loss ``sum_c loss_c``
(each client's own mean over its own rows) gives every client's slice exactly its own
gradient. Per client, as in :func:`fedfm.client.trainer.train_locally`: its own seeded
batches in its own order, the strategy's ``extra_loss`` on its own slice (FedProx), its own
``grad_correction`` (SCAFFOLD), its own gradient-norm clip and its frozen tensors left alone.
Adam, AdamW and SGD act element by element, so one optimiser over the stacked tensors keeps
every client's state apart; a client whose batches run out leaves the stack (its slices
are kept as its result and dropped from the tensors and the optimiser state), so every
client still in the stack has taken the same number of steps (Adam's step count is shared).

Every batch is padded to the stack's widest (attention mask 0: no real token attends to the
padding; a causal LM's positions beyond a client's own width are cut before its loss). The
result equals one-after-another training to float tolerance (sums in another order).
Dropout is the exception: its masks are drawn once for the whole stack from one generator
seeded by the stack, so with dropout > 0 the run is statistically, not bitwise, the
sequential one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from fedfm.client.fit import LocalPlan
from fedfm.client.trainer import OPTIMIZERS, LocalResult, _epochs_or_steps
from fedfm.data.batching import Batch
from fedfm.errors import ConfigError
from fedfm.models.params import trainable_parameters

KEY = "simulation.parallel_clients"


@dataclass(frozen=True)
class _Lora:
    """One peft LoRA Linear layer: where its two factors live among the params."""

    module: Any  # peft's lora.Linear (its ModuleDicts defeat static typing)
    adapter: str
    a: str
    b: str


@dataclass(frozen=True)
class _Head:
    """A trainable plain Linear (the task head): its weight's and bias's param names."""

    module: torch.nn.Linear
    weight: str
    bias: str


def stackable(model: torch.nn.Module) -> tuple[list[_Lora], list[_Head]]:
    """The model's LoRA layers and trainable Linear heads, every trainable tensor covered.

    Raises:
        ConfigError: a trainable tensor that is neither a plain LoRA Linear's factor nor a
            Linear head's weight or bias (IA3, DoRA, LoRA on an embedding, ...), naming
            ``simulation.parallel_clients``.
    """
    names = set(trainable_parameters(model))
    loras, heads, covered = [], [], set()
    for path, module in model.named_modules():
        factors = getattr(module, "lora_A", None)
        if isinstance(factors, torch.nn.ModuleDict) and hasattr(module, "base_layer"):
            plain = (
                isinstance(module.base_layer, torch.nn.Linear)
                and len(factors) == 1
                and not getattr(module, "lora_variant", {})
                and not getattr(module, "merged_adapters", [])
            )
            adapter = next(iter(factors), "default")
            a = f"{path}.lora_A.{adapter}.weight"
            b = f"{path}.lora_B.{adapter}.weight"
            if plain and (a in names or b in names):
                loras.append(_Lora(module, adapter, a, b))
                covered |= {a, b}
    for name in sorted(names - covered):
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if type(module) is torch.nn.Linear and attr in ("weight", "bias"):
            heads.append(_Head(module, f"{path}.weight", f"{path}.bias"))
            covered |= {name}
    left = sorted(names - covered)
    if left:
        raise ConfigError(
            f"{KEY} stacks LoRA factors on Linear layers and Linear heads only, but the model "
            f"also trains {left[:3]}: set {KEY} = 0, or adapter.method = 'lora' on Linear "
            "target_modules"
        )
    heads = list({id(h.module): h for h in heads}.values())  # weight and bias: one head
    return loras, heads


class _Stack:
    """The stacked trainable tensors (``(C, *shape)`` leaves) that the patched layers read,
    and this step's rows: client ``c`` owns rows ``offsets[c] ... offsets[c] + rows[c] - 1``
    of the model's input (client-major, no padding rows)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.width = 0  # the most rows any client has this step
        self.index: torch.Tensor | None = None  # row -> slot in (C * width); None: no gaps

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.tensors.items())

    @property
    def clients(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def set_rows(self, rows: list[int]) -> None:
        """This step's rows per client (in stack order)."""
        self.width = max(rows)
        if all(r == self.width for r in rows):
            self.index = None
            return
        slots = [c * self.width + r for c, n in enumerate(rows) for r in range(n)]
        self.index = torch.tensor(slots, device=next(iter(self.tensors.values())).device)

    def get(self, name: str, shared: torch.Tensor) -> torch.Tensor:
        """Client-stacked ``name``, or the module's own (frozen, shared) tensor."""
        return self.tensors.get(name, shared)

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, ..., d)``, the real rows, as ``(C, width * ..., d)`` (zeros in the gaps)."""
        if self.index is not None:
            full = x.new_zeros(self.clients * self.width, *x.shape[1:])
            x = full.index_copy(0, self.index, x)
        return x.reshape(self.clients, -1, x.shape[-1])

    def gather(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """:meth:`spread`'s inverse: ``(C, width * ..., d)`` back to ``(N, ..., d)``."""
        y = y.reshape(-1, *like.shape[1:-1], y.shape[-1])
        return y if self.index is None else y.index_select(0, self.index)


def _lora_forward(layer: _Lora, stack: _Stack) -> Callable[..., torch.Tensor]:
    m = layer.module

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = m.base_layer(x, *args, **kwargs)  # the frozen weight, one product for all
        a = stack.get(layer.a, m.lora_A[layer.adapter].weight)  # (C, r, in) or shared (r, in)
        b = stack.get(layer.b, m.lora_B[layer.adapter].weight)  # (C, out, r) or shared
        h = stack.spread(m.lora_dropout[layer.adapter](x.to(a.dtype)))  # (C, B*T, in)
        delta = stack.gather((h @ a.transpose(-1, -2)) @ b.transpose(-1, -2), result)
        return (result + delta * m.scaling[layer.adapter]).to(result.dtype)

    return forward


def _head_forward(head: _Head, stack: _Stack) -> Callable[[torch.Tensor], torch.Tensor]:
    m = head.module

    def forward(x: torch.Tensor) -> torch.Tensor:
        w = stack.get(head.weight, m.weight)  # (C, K, H) or shared (K, H)
        bias = stack.tensors.get(head.bias, m.bias)  # None: a head without bias
        out = stack.spread(x) @ w.transpose(-1, -2)  # (C, B*..., K)
        if bias is not None:
            out = out + (bias.unsqueeze(-2) if bias.dim() == 2 else bias)
        return stack.gather(out, x)

    return forward


@contextlib.contextmanager
def stacked_forward(model: torch.nn.Module, stack: _Stack) -> Iterator[None]:
    """Inside, the model's LoRA layers and heads read ``stack`` instead of their own tensors."""
    loras, heads = stackable(model)
    patched = [(lo.module, _lora_forward(lo, stack)) for lo in loras]
    patched += [(h.module, _head_forward(h, stack)) for h in heads]
    saved = [(m, m.__dict__.get("forward")) for m, _ in patched]
    try:
        for m, forward in patched:
            m.forward = forward  # an instance attribute: hooks in __call__ still run
        yield
    finally:
        for m, before in saved:
            if before is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = before


class _Replay:
    """A stand-in model that returns precomputed logits: lets a task's own ``loss`` (which
    calls ``model(**inputs).logits`` once, :mod:`fedfm.tasks`) score one client's slice."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __call__(self, **inputs: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


def stack_batches(batches: list[Batch], pad_id: int) -> Batch:
    """``C`` batches as one client-major batch of their rows (model inputs only, no labels),
    token tensors padded to the longest (``pad_id``, attention mask 0)."""
    out: Batch = {}
    for key in (k for k in batches[0] if k != "labels"):
        parts = [b[key] for b in batches]
        if parts[0].dim() == 2:  # (B, T) tokens
            width = max(p.shape[1] for p in parts)
            fill = pad_id if key == "input_ids" else 0
            parts = [torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in parts]
        out[key] = torch.cat(parts)
    return out


def _client_losses(
    logits: torch.Tensor, plans: list[LocalPlan], batches: list[Batch]
) -> list[torch.Tensor]:
    """Each client's loss, by its own task, on its own rows (and its own tokens)."""
    rows = [len(b["labels"]) for b in batches]
    losses = []
    for mine, plan, batch in zip(logits.split(rows), plans, batches, strict=True):
        if mine.dim() >= 3:  # (B, T, V): a sequence task's positions beyond its own width
            mine = mine[:, : batch["input_ids"].shape[1]]
        losses.append(plan.task.loss(_Replay(mine), batch))  # type: ignore[arg-type]
    return losses


def _clip(grads: list[torch.Tensor], max_norm: float) -> None:
    """Per-client ``clip_grad_norm_``: each client's norm over its own slices of ``grads``."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1).norm(dim=1)  # (C,)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))


def _shrink(stack: _Stack, optimizer: torch.optim.Optimizer, index: torch.Tensor) -> None:
    """Keep only the clients at ``index`` in the stacked tensors and the optimiser's state."""
    for name, old in list(stack.tensors.items()):
        new = old.detach().index_select(0, index).requires_grad_(True)
        state = optimizer.state.pop(old, {})
        optimizer.state[new] = {
            k: v.index_select(0, index) if torch.is_tensor(v) and v.dim() > 0 else v
            for k, v in state.items()
        }
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        stack.tensors[name] = new


def _step(
    stack: _Stack,
    plans: list[LocalPlan],
    batches: list[Batch],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    corrections: dict[str, torch.Tensor] | None,
    pad_id: int,
) -> list[float]:
    """One local step of every client in the stack; each client's task loss."""
    device = next(iter(stack.tensors.values())).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    stack.set_rows([len(b["labels"]) for b in batches])
    losses = _client_losses(model(**stack_batches(batches, pad_id)).logits, plans, batches)
    total = torch.stack(losses).sum()
    for j, plan in enumerate(plans):  # FedProx: each client's term on its own slice
        if plan.hooks.extra_loss is not None:
            total = total + plan.hooks.extra_loss({k: t[j] for k, t in stack.tensors.items()})
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    # a tensor the forward did not reach has no gradient: the optimiser skips it, as alone
    grads = {k: t.grad for k, t in stack.tensors.items() if t.grad is not None}
    if corrections is not None:  # SCAFFOLD: c - c_i, each client its own
        for k, g in grads.items():
            g.add_(corrections[k])
    frozen = [(j, k) for j, p in enumerate(plans) for k in p.hooks.frozen if k in grads]
    for j, k in frozen:  # a client's frozen tensors: no gradient, no change
        grads[k][j] = 0
    kept = [(j, k, stack.tensors[k][j].detach().clone()) for j, k in frozen]
    if plans[0].cfg.max_grad_norm > 0 and grads:
        _clip(list(grads.values()), plans[0].cfg.max_grad_norm)
    optimizer.step()
    with torch.no_grad():
        for j, k, value in kept:  # weight decay must not touch them either
            stack.tensors[k][j] = value
    return torch.stack(losses).tolist()


def train_together(
    model: torch.nn.Module, plans: list[LocalPlan], *, pad_id: int, seed: int
) -> list[LocalResult]:
    """Train ``plans``' clients together (see the module's docstring); one result each, in
    order, as :func:`~fedfm.client.trainer.train_locally` gives them one after another.

    Args:
        model: the shared model; its own trainable tensors are neither read nor changed.
        plans: the clients' local training, as :func:`~fedfm.client.fit.prepare` set it up
            (the same ``[client]`` config but for ``steps``).
        pad_id: the token id shorter rows are padded with.
        seed: seeds torch's CPU generator once for the whole stack (dropout).
    """
    device = next(iter(trainable_parameters(model).values())).device
    stack = _Stack(
        {
            k: torch.stack([p.start[k] for p in plans]).to(device).requires_grad_(True)
            for k in plans[0].start
        }
    )
    optimizer = OPTIMIZERS[plans[0].cfg.optimizer](list(stack.tensors.values()), plans[0].cfg)
    corrections = _corrections(plans, device)
    streams = [_epochs_or_steps(p.make_batches, p.cfg) for p in plans]
    active = list(range(len(plans)))  # clients in the stack, in stack order
    steps, loss_sums = [0] * len(plans), [0.0] * len(plans)
    results: dict[int, LocalResult] = {}
    torch.default_generator.manual_seed(seed)
    model.train()
    with stacked_forward(model, stack):
        while active:
            drawn = {i: next(streams[i], None) for i in active}
            keep = [j for j, i in enumerate(active) if drawn[i] is not None]
            if len(keep) < len(active):  # clients whose batches ran out leave the stack
                for j, i in enumerate(active):
                    if drawn[i] is None:
                        params = {k: t[j].detach().to("cpu", copy=True) for k, t in stack.items()}
                        results[i] = LocalResult(params, steps[i], loss_sums[i] / max(steps[i], 1))
                active = [active[j] for j in keep]
                if not active:
                    break
                index = torch.tensor(keep, device=device)
                _shrink(stack, optimizer, index)
                if corrections is not None:
                    corrections = {k: v.index_select(0, index) for k, v in corrections.items()}
            batches = [b for i in active if (b := drawn[i]) is not None]  # all are
            losses = _step(
                stack, [plans[i] for i in active], batches, model, optimizer, corrections, pad_id
            )
            for i, loss in zip(active, losses, strict=True):
                steps[i] += 1
                loss_sums[i] += loss
    model.eval()
    return [results[i] for i in range(len(plans))]


def _corrections(plans: list[LocalPlan], device: torch.device) -> dict[str, torch.Tensor] | None:
    """The stacked gradient corrections (SCAFFOLD's ``c - c_i``), ``None`` without any."""
    if not any(p.hooks.grad_correction for p in plans):
        return None
    return {
        k: torch.stack(
            [(p.hooks.grad_correction or {}).get(k, torch.zeros_like(p.start[k])) for p in plans]
        ).to(device)
        for k in plans[0].start
    }
