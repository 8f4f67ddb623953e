"""One generic name -> factory registry, used for models, datasets, partitions and strategies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedfm.errors import ConfigError, closest

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; refuses duplicates; unknown names get a did-you-mean hint.

    Example:
        >>> strategies: Registry[type] = Registry("strategy")
        >>> @strategies.register("fedavg")
        ... class FedAvg: ...
        >>> strategies.get("fedavg").__name__
        'FedAvg'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str, *, field: str | None = None) -> T:
        if name not in self._items:
            where = f"{field} = " if field else ""
            raise ConfigError(
                f"unknown {self.kind} {where}'{name}'.{closest(name, self._items)} "
                f"Valid choices: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
