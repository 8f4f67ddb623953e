"""``[pft]``: the settings of ``fedfm transfer pft`` (one-shot FedPFT, :mod:`fedfm.transfer`).

FedPFT is one message per client, not rounds, so this feature is never active in a federated
run; it is registered so that ``[pft]`` is checked with every config, like the others.
"""

from __future__ import annotations

from typing import Any

from fedfm.config import RunConfig
from fedfm.features.base import Feature, register
from fedfm.transfer.choices import COVARIANCES, HEADS


@register
class PFT(Feature):
    """The checks of ``[pft]``; ``fedfm transfer pft`` runs it (:func:`run_pft`)."""

    name = "pft"

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return False  # a one-shot command, not a round feature

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        for key, choices in (("pft.covariance", COVARIANCES), ("pft.head", HEADS)):
            if flat[key] not in choices:
                problems.append(f"{key} = {flat[key]!r} is not one of {', '.join(choices)}")
        for key in ("pft.components", "pft.hidden", "pft.epochs", "pft.batch_size",
                    "pft.fedavg_epochs"):  # fmt: skip
            if flat[key] < 1:
                problems.append(f"{key} = {flat[key]} must be >= 1")
        for key in ("pft.samples_per_class", "pft.fedavg_rounds"):
            if flat[key] < 0:
                problems.append(f"{key} = {flat[key]} must be >= 0 (0 = {_ZERO[key]})")
        if not flat["pft.lr"] > 0:
            problems.append(f"pft.lr = {flat['pft.lr']} must be > 0 (e.g. 1e-2)")
        return problems


_ZERO = {
    "pft.samples_per_class": "each client's own class counts",
    "pft.fedavg_rounds": "no FedAvg reference",
}
