"""Typed, frozen configuration per stage: YAML file + ``key=value`` / ``--key value`` overrides.

Each stage's config is composed from small groups (:mod:`preftune.config.groups`, ``loss``, ``rl``,
``stages``). Unknown keys, wrong types and out-of-range values are all reported at once, each naming
the key and the fix, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from preftune.config.compose import is_composed, unknown_key_message
from preftune.config.fields import Problems
from preftune.config.loss import LossGroup
from preftune.config.parse import Text, cli_overrides, coerce, read_settings, show_default, type_name
from preftune.config.stages import (
    COMMAND_CONFIGS,
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    OnlineDPOConfig,
    RLConfig,
    RMConfig,
    SFTConfig,
    TrainingConfig,
)

LossConfig = LossGroup  # the loss keys' group, as the objectives name it

C = TypeVar("C")

__all__ = ["COMMAND_CONFIGS", "DPOConfig", "EvalConfig", "GRPOConfig", "LossConfig", "OnlineDPOConfig", "RLConfig", "RMConfig", "SFTConfig", "Text", "TrainingConfig",
           "cli_overrides", "describe", "from_dict", "load_config", "read_settings", "to_dict"]


def load_config(cls: type[C], path: str | Path | None = None, overrides: typing.Sequence[Any] = (),
                **values: Any) -> C:
    """Build ``cls`` from a YAML file, then overrides (``"key=value"`` or ``(key, value)``), then keyword
    values (in that order); every value is read by its key's type."""
    return from_dict(cls, read_settings(path, overrides, **values))


def from_dict(cls: type[C], raw: dict[str, Any]) -> C:
    if is_composed(cls):
        return cls(**raw)
    # A plain frozen dataclass (e.g. an experiment's config): same reading rules, its own checks.
    p = Problems()
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            p.add(unknown_key_message(cls, key))
    hints = typing.get_type_hints(cls)
    coerced = {k: coerce(k, v, hints[k], p) for k, v in raw.items() if k in fields}
    p.raise_if_any()
    return cls(**coerced)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def describe(cls: type) -> str:
    """Every key with its type, default and meaning, by group: the body of ``preftune <stage> --help``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sections: list[tuple[str, list[str]]] = []
    if is_composed(cls):
        for group in cls.groups:
            names = [f.name for f in dataclasses.fields(group) if cls.key_group.get(f.name) is group]
            sections.append(((group.__doc__ or group.__name__).strip().splitlines()[0], names))
    else:
        sections.append(("", list(fields)))
    lines = []
    for title, names in sections:
        if title and names:
            lines.append(f" {title}")
        for name in names:
            f = fields[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"  {name} ({type_name(hints[name])}) = {show_default(default)}\n"
                         f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)
