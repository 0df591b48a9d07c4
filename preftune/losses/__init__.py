"""Registry of preference losses: ``preftune.losses.get(name)`` returns a pure function.

Names follow TRL's ``DPOConfig.loss_type`` so a migrating user's settings carry over.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from preftune.losses import preference

LossFn = Callable[..., tuple]

_REGISTRY: dict[str, LossFn] = {
    "sigmoid": preference.sigmoid,
    "ipo": preference.ipo,
    "unlikelihood": preference.unlikelihood,
}


def get(name: str) -> LossFn:
    """The loss function registered under ``name``; a KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known losses: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def register(name: str, fn: LossFn) -> None:
    if name in _REGISTRY:
        raise ValueError(f"loss {name!r} is already registered")
    _REGISTRY[name] = fn


def hyperparameters(name: str) -> set[str]:
    """Keyword-only hyperparameters (besides beta) the loss accepts, read from its signature."""
    params = inspect.signature(get(name)).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"beta"}
