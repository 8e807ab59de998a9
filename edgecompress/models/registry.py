"""Model registry: `@register_model` on a constructor, `create_model(name)`, `list_models(pattern)`."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from edgecompress.errors import UserError, suggest

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F | None = None, *, name: str | None = None):
    """Register a model constructor under `name` (default: the function's name).

    Usable bare (`@register_model`) or with a name (`@register_model(name="x")`).
    Registering the same name twice is a programming error (ValueError).
    """

    def decorate(f: F) -> F:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"model name {key!r} is already registered by {_REGISTRY[key].__module__}")
        _REGISTRY[key] = f
        return f

    return decorate if fn is None else decorate(fn)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching the shell-style `pattern` (e.g. '*shuffle*')."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` (a leading 'zoo:' is accepted) with `kwargs`.

    Unknown names, unknown keyword arguments and invalid values raise UserError.
    """
    key = name.removeprefix("zoo:")
    if key not in _REGISTRY:
        raise UserError(
            f"unknown zoo model {key!r}{suggest(key, _REGISTRY)}; `edgecompress.models.list_models()` lists all "
            f"{len(_REGISTRY)}: {', '.join(list_models())}"
        )
    fn = _REGISTRY[key]
    accepted = list(inspect.signature(fn).parameters)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise UserError(f"zoo:{key} does not take {', '.join(map(repr, unknown))}; it takes {', '.join(accepted)}")
    try:
        return fn(**kwargs)
    except ValueError as e:  # constructors validate their arguments with ValueError
        raise UserError(f"zoo:{key}: {e}") from e
