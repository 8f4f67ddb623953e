"""Seeded, pure functions that split a training pool of ``n`` examples among clients.

Every method returns ``list[np.ndarray]``: one int64 array of example indices per client,
sorted ascending. Each draws from ``np.random.default_rng(seed)`` only, never mutates its
inputs, and gives identical output for identical inputs.

Methods (registered in :data:`PARTITIONS`, dispatched by :func:`partition`):

- ``iid``: uniform random split into near-equal sizes.
- ``dirichlet``: label skew; per-class Dirichlet(alpha) proportions over clients.
- ``shards``: pathological label skew; each client gets a few label-sorted shards.
- ``quantity``: size skew; client sizes from Dirichlet(alpha), labels IID.
- ``natural``: one client per natural group (domain, speaker, author).

Example:
    >>> parts = partition("iid", num_examples=10, labels=None, groups=None,
    ...                   num_clients=3, seed=0)
    >>> [len(p) for p in parts]
    [4, 3, 3]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedfm.errors import PartitionError
from fedfm.registry import Registry

MAX_TRIES = 1000  # resampling budget of ``dirichlet`` before it gives up

_LABEL_FREE = "'iid', 'quantity' or 'natural'"


# --------------------------------------------------------------------------- validation


def _check_min_size(min_size: int) -> None:
    """Raise PartitionError unless ``min_size`` is at least one."""
    if min_size < 1:
        raise PartitionError(
            f"data.min_client_size = {min_size} must be >= 1; every client needs an example."
        )


def _check_clients(n: int, num_clients: int, min_size: int) -> None:
    """Raise PartitionError unless ``num_clients`` clients of ``min_size`` fit in ``n``."""
    if num_clients < 1:
        raise PartitionError(f"data.num_clients = {num_clients} must be >= 1; use 1 or more.")
    _check_min_size(min_size)
    if num_clients > n:
        raise PartitionError(
            f"data.num_clients = {num_clients} exceeds the {n} training examples; "
            f"use at most {n} clients or a larger dataset."
        )
    if num_clients * min_size > n:
        raise PartitionError(
            f"data.min_client_size = {min_size} with data.num_clients = {num_clients} needs "
            f"{num_clients * min_size} examples but the training pool has {n}; lower "
            f"data.min_client_size to at most {n // num_clients} or use fewer clients."
        )


def _check_alpha(alpha: float) -> None:
    """Raise PartitionError unless ``alpha`` is a finite positive concentration."""
    if not (math.isfinite(alpha) and alpha > 0):
        raise PartitionError(
            f"data.alpha = {alpha} must be > 0; use e.g. 0.1 for strong skew, "
            "1.0 for moderate skew or 100 for near-IID."
        )


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array, or raise PartitionError."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise PartitionError(
            f"labels must be a 1-D integer array of class ids, got shape {labels.shape} "
            f"and dtype {labels.dtype}; for label-free data use data.partition = {_LABEL_FREE}."
        )
    return labels.astype(np.int64, copy=False)


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Return each client's indices as a sorted int64 array."""
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --------------------------------------------------------------------------- iid


def iid(n: int, num_clients: int, *, seed: int, min_size: int = 1) -> list[np.ndarray]:
    """Split ``n`` examples uniformly at random into near-equal client shares.

    Args:
        n: size of the training pool.
        num_clients: number of clients.
        seed: seed of ``np.random.default_rng``.
        min_size: fewest examples any client may get.

    Returns:
        One sorted int64 index array per client; sizes differ by at most one.
    """
    _check_clients(n, num_clients, min_size)
    perm = np.random.default_rng(seed).permutation(n)
    return _finish(np.array_split(perm, num_clients))


# --------------------------------------------------------------------------- dirichlet


def _group_by(owner: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Return, for each group id in ``range(num_groups)``, the sorted indices it owns."""
    order = np.argsort(owner, kind="stable").astype(np.int64)  # stable: indices stay sorted
    return np.split(order, np.cumsum(np.bincount(owner, minlength=num_groups))[:-1])


def _dirichlet_once(
    by_class: list[np.ndarray], num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Draw one label-skewed split and return each example's client id ``(n,)``.

    Each class is cut by Dirichlet(alpha) proportions over clients. Clients already
    holding ``n / num_clients`` examples get no share of later classes (the balancing
    step of Yurochkin et al. 2019 used by FedLab and NIID-Bench).
    """
    n = sum(len(idx) for idx in by_class)
    owner = np.empty(n, dtype=np.int64)
    sizes = np.zeros(num_clients, dtype=np.int64)
    for idx in by_class:
        open_ = sizes < n / num_clients
        weights = rng.dirichlet(np.full(num_clients, alpha)) * open_
        if not weights.sum() > 0:  # underflow at tiny alpha: share among open clients
            weights = open_.astype(float)
        cuts = (np.cumsum(weights / weights.sum()) * len(idx)).astype(np.int64)[:-1]
        counts = np.diff(cuts, prepend=0, append=len(idx))
        owner[rng.permutation(idx)] = np.repeat(np.arange(num_clients), counts)
        sizes += counts
    return owner


def dirichlet(
    labels: np.ndarray, num_clients: int, *, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed split: per-class Dirichlet(alpha) proportions over clients.

    The scheme of Hsu et al. (2019) as implemented by FedLab: for every class, draw
    ``p ~ Dir(alpha * 1)`` over clients and cut that class's examples by ``p``. Small
    ``alpha`` (0.1) gives each client few classes; large ``alpha`` (100) is near IID.
    The whole draw is repeated (at most ``MAX_TRIES`` times) until every client has at
    least ``min_size`` examples.

    Args:
        labels: int array ``(n,)`` of class ids.
        num_clients: number of clients.
        alpha: Dirichlet concentration, > 0.
        seed: seed of ``np.random.default_rng``.
        min_size: fewest examples any client may get.

    Returns:
        One sorted int64 index array per client.

    Raises:
        PartitionError: on invalid arguments, or when no draw within ``MAX_TRIES`` gives
            every client ``min_size`` examples.
    """
    labels = _check_labels(labels)
    _check_clients(len(labels), num_clients, min_size)
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_TRIES):
        owner = _dirichlet_once(by_class, num_clients, alpha, rng)
        if np.bincount(owner, minlength=num_clients).min() >= min_size:
            return _group_by(owner, num_clients)
    raise PartitionError(
        f"data.alpha = {alpha} left some client with fewer than data.min_client_size = "
        f"{min_size} examples in {MAX_TRIES} tries (data.num_clients = {num_clients}, "
        f"{len(labels)} examples); raise data.alpha, use fewer clients or lower "
        "data.min_client_size."
    )


# --------------------------------------------------------------------------- shards


def _check_shards(n: int, num_clients: int, shards_per_client: int) -> None:
    """Raise PartitionError unless ``num_clients * shards_per_client`` shards fit in ``n``."""
    if shards_per_client < 1:
        raise PartitionError(
            f"data.shards_per_client = {shards_per_client} must be >= 1; 2 is the classic "
            "pathological non-IID setting."
        )
    if shards_per_client * num_clients > n:
        raise PartitionError(
            f"data.shards_per_client = {shards_per_client} with data.num_clients = "
            f"{num_clients} needs {shards_per_client * num_clients} shards but there are "
            f"only {n} examples; lower data.shards_per_client to at most "
            f"{n // num_clients} or use fewer clients."
        )


def shards(
    labels: np.ndarray, num_clients: int, *, shards_per_client: int, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al. 2017): a few label-sorted shards each.

    Examples are sorted by label (ties in seeded random order), cut into
    ``num_clients * shards_per_client`` contiguous shards of near-equal size, and each
    client gets ``shards_per_client`` shards at random, so it sees about that many labels.

    Args:
        labels: int array ``(n,)`` of class ids.
        num_clients: number of clients.
        shards_per_client: shards (about: distinct labels) per client, >= 1.
        seed: seed of ``np.random.default_rng``.
        min_size: fewest examples any client may get.

    Returns:
        One sorted int64 index array per client.
    """
    labels = _check_labels(labels)
    n = len(labels)
    _check_clients(n, num_clients, min_size)
    _check_shards(n, num_clients, shards_per_client)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    by_label = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(by_label, num_clients * shards_per_client)
    order = rng.permutation(len(pieces)).reshape(num_clients, shards_per_client)
    parts = [np.concatenate([pieces[s] for s in row]) for row in order]
    smallest = min(len(p) for p in parts)
    if smallest < min_size:
        raise PartitionError(
            f"data.min_client_size = {min_size} is more than the smallest shards client "
            f"({smallest} examples); lower data.min_client_size or data.num_clients."
        )
    return _finish(parts)


# --------------------------------------------------------------------------- quantity


def quantity(
    n: int, num_clients: int, *, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Size-skewed split: client sizes from Dirichlet(alpha) over clients, labels IID.

    Every client first gets ``min_size`` examples; the remaining ``n - num_clients *
    min_size`` are dealt by a multinomial draw with Dirichlet(alpha) proportions, so the
    minimum holds by construction. Small ``alpha`` gives a few large clients.

    Args:
        n: size of the training pool.
        num_clients: number of clients.
        alpha: Dirichlet concentration, > 0.
        seed: seed of ``np.random.default_rng``.
        min_size: fewest examples any client may get.

    Returns:
        One sorted int64 index array per client.
    """
    _check_clients(n, num_clients, min_size)
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.full(num_clients, alpha))
    sizes = min_size + rng.multinomial(n - num_clients * min_size, share / share.sum())
    perm = rng.permutation(n)
    return _finish(np.split(perm, np.cumsum(sizes)[:-1]))


# --------------------------------------------------------------------------- natural


def _group_members(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return sorted distinct group names and each group's sorted example indices."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise PartitionError(
            f"groups must be a non-empty 1-D array of natural client ids, got shape "
            f"{groups.shape}; use data.partition = 'iid' or 'quantity' instead."
        )
    names, inverse = np.unique(groups, return_inverse=True)
    return names, _group_by(inverse.reshape(-1), len(names))


def _eligible(members: list[np.ndarray], min_size: int) -> np.ndarray:
    """Return the ids of groups with at least ``min_size`` examples."""
    _check_min_size(min_size)
    counts = np.array([len(m) for m in members])
    keep = np.flatnonzero(counts >= min_size)
    if len(keep) == 0:
        raise PartitionError(
            f"no natural group has data.min_client_size = {min_size} examples (the largest "
            f"has {counts.max()}); lower data.min_client_size."
        )
    return keep


def _choose(eligible: np.ndarray, num_clients: int | None, seed: int) -> np.ndarray:
    """Pick ``num_clients`` of the eligible group ids (seeded, sorted), or all of them."""
    if num_clients is None or num_clients == len(eligible):
        return eligible
    if num_clients < 1:
        raise PartitionError(f"data.num_clients = {num_clients} must be >= 1; use 1 or more.")
    if num_clients > len(eligible):
        raise PartitionError(
            f"data.num_clients = {num_clients} exceeds the {len(eligible)} natural groups "
            f"with at least data.min_client_size examples; use data.num_clients <= "
            f"{len(eligible)} or lower data.min_client_size."
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=num_clients, replace=False))


def _natural_selection(
    groups: np.ndarray, num_clients: int | None, seed: int, min_size: int
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Return (distinct names, per-group indices, chosen group ids)."""
    names, members = _group_members(groups)
    return names, members, _choose(_eligible(members, min_size), num_clients, seed)


def natural(
    groups: np.ndarray, *, num_clients: int | None = None, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """One client per natural group (domain, speaker, author), in sorted group order.

    Groups with fewer than ``min_size`` examples are dropped (their examples belong to
    no client). When ``num_clients`` is smaller than the number of eligible groups, a
    seeded random subset is kept, still in sorted order; :func:`natural_groups` gives
    the names of the chosen groups.

    Args:
        groups: array ``(n,)`` of group ids, one per example.
        num_clients: number of clients; ``None`` keeps every eligible group.
        seed: seed of ``np.random.default_rng`` (used only to pick a subset).
        min_size: fewest examples a group needs to become a client.

    Returns:
        One sorted int64 index array per chosen group.
    """
    _, members, chosen = _natural_selection(groups, num_clients, seed, min_size)
    return [members[g] for g in chosen]


def natural_groups(
    groups: np.ndarray, *, num_clients: int | None = None, seed: int, min_size: int = 1
) -> list[str]:
    """Names of the groups :func:`natural` makes clients of, in the same order.

    Takes the same arguments as :func:`natural`.
    """
    names, _, chosen = _natural_selection(groups, num_clients, seed, min_size)
    return [str(names[g]) for g in chosen]


# --------------------------------------------------------------------------- dispatch


@dataclass(frozen=True)
class PartitionRequest:
    """Everything any partition method may need; each method reads what it uses.

    Attributes:
        num_examples: size of the training pool.
        labels: int array ``(n,)`` of class ids, or ``None`` (causal LM).
        groups: array ``(n,)`` of natural client ids, or ``None``.
        num_clients: number of clients (``data.num_clients``).
        seed: seed of ``np.random.default_rng``.
        min_size: fewest examples any client may get (``data.min_client_size``).
        alpha: Dirichlet concentration for ``dirichlet`` and ``quantity`` (``data.alpha``).
        shards_per_client: shards per client for ``shards`` (``data.shards_per_client``).
        dataset: dataset name, for error messages.
    """

    num_examples: int
    labels: np.ndarray | None
    groups: np.ndarray | None
    num_clients: int
    seed: int
    min_size: int = 1
    alpha: float = 0.5
    shards_per_client: int = 2
    dataset: str | None = None

    def __post_init__(self) -> None:
        for name, arr in (("labels", self.labels), ("groups", self.groups)):
            if arr is not None and len(arr) != self.num_examples:
                raise PartitionError(
                    f"{name} has {len(arr)} entries but num_examples = {self.num_examples}; "
                    "pass the training split's own labels and groups."
                )


PartitionFn = Callable[[PartitionRequest], list[np.ndarray]]

PARTITIONS: Registry[PartitionFn] = Registry("partition")


def _dataset(req: PartitionRequest) -> str:
    return f"dataset '{req.dataset}'" if req.dataset else "this dataset"


def _need_labels(req: PartitionRequest, method: str) -> np.ndarray:
    """Return the request's labels, or raise PartitionError naming label-free methods."""
    if req.labels is None:
        raise PartitionError(
            f"data.partition = '{method}' needs class labels, but {_dataset(req)} has none "
            f"(e.g. a causal LM corpus); use data.partition = {_LABEL_FREE}."
        )
    return req.labels


@PARTITIONS.register("iid")
def _iid(req: PartitionRequest) -> list[np.ndarray]:
    return iid(req.num_examples, req.num_clients, seed=req.seed, min_size=req.min_size)


@PARTITIONS.register("dirichlet")
def _dirichlet(req: PartitionRequest) -> list[np.ndarray]:
    labels = _need_labels(req, "dirichlet")
    return dirichlet(labels, req.num_clients, alpha=req.alpha, seed=req.seed, min_size=req.min_size)


@PARTITIONS.register("shards")
def _shards(req: PartitionRequest) -> list[np.ndarray]:
    labels = _need_labels(req, "shards")
    return shards(
        labels,
        req.num_clients,
        shards_per_client=req.shards_per_client,
        seed=req.seed,
        min_size=req.min_size,
    )


@PARTITIONS.register("quantity")
def _quantity(req: PartitionRequest) -> list[np.ndarray]:
    return quantity(
        req.num_examples, req.num_clients, alpha=req.alpha, seed=req.seed, min_size=req.min_size
    )


@PARTITIONS.register("natural")
def _natural(req: PartitionRequest) -> list[np.ndarray]:
    if req.groups is None:
        has_labels = req.labels is not None
        other = (
            "'iid', 'quantity', 'dirichlet' or 'shards'" if has_labels else "'iid' or 'quantity'"
        )
        raise PartitionError(
            f"{_dataset(req)} has no natural client ids, so data.partition = 'natural' "
            f"cannot be used; use data.partition = {other}."
        )
    return natural(req.groups, num_clients=req.num_clients, seed=req.seed, min_size=req.min_size)


def partition(
    method: str,
    *,
    num_examples: int,
    labels: np.ndarray | None,
    groups: np.ndarray | None,
    num_clients: int,
    seed: int,
    min_size: int = 1,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    dataset: str | None = None,
) -> list[np.ndarray]:
    """Split a training pool among clients with the method registered as ``method``.

    The keyword arguments are the fields of :class:`PartitionRequest` and are documented
    there; each method reads only those it needs.

    Args:
        method: a name in :data:`PARTITIONS` (the config field ``data.partition``).

    Returns:
        One sorted int64 index array per client.

    Raises:
        ConfigError: ``method`` is not registered.
        PartitionError: the partition is impossible as asked; the message names the fix.
    """
    fn = PARTITIONS.get(method, field="data.partition")
    req = PartitionRequest(
        num_examples, labels, groups, num_clients, seed, min_size, alpha, shards_per_client, dataset
    )
    return fn(req)
