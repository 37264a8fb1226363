"""The controller registry: names (the ones configs and tables use) to controller factories.

A controller is one file: a factory returning a :class:`~emrakul.controllers.base.Controller`,
decorated with ``@register("name")``, which adds it to the table :func:`make` reads. This is the
registry pattern of jaxpruner's ``register_algorithm``, with two guards: a name is registered
once (re-registering raises unless ``override=True``), and names are non-empty strings.

``NAMES`` is a live, read-only view of the registered names in registration order: a controller
registered after import (by a user, or a test) appears in it, and ``name in NAMES``,
iteration, ``len`` and indexing behave as on a tuple. :func:`names` returns the same as a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

from emrakul.controllers.base import Controller

Factory = Callable[..., Controller]
F = TypeVar("F", bound=Factory)

_FACTORIES: dict[str, Factory] = {}


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a controller name must be a str, got {type(name).__name__} {name!r}")
    if not name or name != name.strip():
        raise ValueError(
            f"a controller name must be a non-empty string without surrounding spaces, got {name!r}"
        )
    return name


def register(name: str, *, override: bool = False) -> Callable[[F], F]:
    """Decorator: registers a controller factory under ``name`` for :func:`make`.

    Usage::

        @register("my_pruner")
        def my_pruner(threshold: float = 0.1) -> Controller:
            ...

    The factory is returned unchanged, so it can still be called directly.

    Args:
      name: the controller's name (a non-empty string without surrounding spaces).
      override: replace an existing registration of ``name`` instead of raising (the name keeps
        its place in :data:`NAMES`).

    Returns:
      The decorator.

    Raises:
      TypeError: ``name`` is not a string, or the decorated object is not callable.
      ValueError: ``name`` is empty, or already registered and ``override`` is False.
    """
    _check_name(name)

    def decorate(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"register({name!r}) needs a callable factory, got {factory!r}")
        if name in _FACTORIES and not override:
            raise ValueError(
                f"a controller named '{name}' is already registered ({_FACTORIES[name]!r}); "
                "pass override=True to replace it"
            )
        _FACTORIES[name] = factory
        return factory

    return decorate


def unregister(name: str) -> Factory:
    """Removes ``name`` from the registry and returns its factory.

    Raises:
      KeyError: ``name`` is not registered.
    """
    _check_name(name)
    if name not in _FACTORIES:
        raise KeyError(f"no controller named '{name}' is registered; registered: {names()}")
    return _FACTORIES.pop(name)


def names() -> tuple[str, ...]:
    """The registered controller names, in registration order."""
    return tuple(_FACTORIES)


def factory(name: str) -> Factory:
    """The factory registered under ``name``.

    Raises:
      ValueError: unknown name.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown controller '{name}'; choose one of {names()}")
    return _FACTORIES[name]


def make(name: str, **kwargs: Any) -> Controller:
    """The controller called ``name`` (one of :data:`NAMES`) with keyword arguments ``kwargs``.

    ``"pruner+remedy"`` names a pruning controller with a plasticity remedy
    (:func:`emrakul.controllers.with_remedy.with_remedy`), both with their defaults.

    Raises:
      ValueError: unknown name, or keyword arguments for a combined name.
    """
    from emrakul.controllers.with_remedy import split_name, with_remedy

    parts = split_name(name)
    if parts is not None:
        if kwargs:
            raise ValueError(f"'{name}': pass keyword arguments to each part (lab configs do)")
        return with_remedy(factory(parts[0])(), factory(parts[1])())
    return factory(name)(**kwargs)


def known(name: str) -> bool:
    """Whether ``name`` is registered, or is ``"pruner+remedy"`` of two registered names."""
    from emrakul.controllers.with_remedy import split_name

    try:
        parts = split_name(name)
    except ValueError:
        return False
    return all(p in _FACTORIES for p in (parts or (name,)))


class _Names(Sequence):
    """A read-only, live tuple-like view of the registered names."""

    __slots__ = ()

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index):
        return names()[index]

    def __len__(self) -> int:
        return len(_FACTORIES)

    def __contains__(self, name: object) -> bool:
        return name in _FACTORIES

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Names | tuple) and names() == tuple(other)

    __hash__ = None  # the contents change as controllers register

    def __repr__(self) -> str:
        return repr(names())


NAMES: Sequence[str] = _Names()
"""The registered controller names (a live, read-only view; ``tuple(NAMES)`` for a copy)."""
