"""Optional features that declare themselves: one module each, registered once.

A feature (:class:`~fedfm.features.base.Feature`) carries its own config check, set-up,
per-round record, evaluation, summary and checkpoint state; the job builds the active ones
and the run loops over them, so switching a feature on touches nothing else. The
mechanisms they use live in :mod:`fedfm.privacy`, :mod:`fedfm.compression`,
:mod:`fedfm.synthetic`, :mod:`fedfm.attacks` and the update chain (:mod:`fedfm.update`).

Add a feature: one module here (a :class:`Feature` subclass under ``@register``) plus one
name in :data:`MODULES` below, whose order is the order of every hook (a round's record
lists the system clock first, then the update chain's entries, then the rest).
"""

import importlib

from fedfm.features.base import FEATURES, Feature, config_problems, each, start_features

MODULES = (
    "system",
    "synthetic",
    "attacks",
    "secagg",
    "robust",
    "client_dp",
    "dpsgd",
    "personal",
    "generation",
    "prefix_cache",
    "offsite",
    "asynchronous",
    "pft",
    "split",
    "distill",
)
for _module in MODULES:  # registers each, in this order
    importlib.import_module(f"fedfm.features.{_module}")

__all__ = ["FEATURES", "MODULES", "Feature", "config_problems", "each", "start_features"]
