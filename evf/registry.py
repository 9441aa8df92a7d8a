"""A small generic registry: short name -> factory plus a metadata record.

Encoders and SAM backends each have one `Registry`. A factory registers itself with an explicit
name (dots allowed, e.g. ``sam2.1_hiera_l``); a duplicate name raises; an unknown name raises
listing the closest matches. Third-party packages add factories through a Python entry-point
group (``evf.encoders`` / ``evf.sam_backends``) whose entries are imported on first lookup.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
M = TypeVar("M")


@dataclass(frozen=True)
class Entry(Generic[T, M]):
    name: str
    factory: Callable[..., T]
    info: M


class Registry(Generic[T, M]):
    """Name -> (factory, info). ``info`` is whatever the data side needs without building weights."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T, M]] = {}
        self._plugins_loaded = False

    def register(self, name: str, info: M) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@ENCODERS.register("beit3_large", info=...)`` above a factory function."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                other = self._entries[name].factory
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {other.__module__}.{other.__qualname__}"
                )
            self._entries[name] = Entry(name, factory, info)
            return factory

        return decorator

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            ep.load()  # importing the module runs its @register decorators

    def get(self, name: str) -> Entry[T, M]:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"Unknown {self.kind} {name!r}.{hint} Registered: {', '.join(sorted(self._entries))}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name).factory(**kwargs)

    def info(self, name: str) -> M:
        return self.get(name).info

    def names(self, pattern: str = "*") -> list[str]:
        self._load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries
