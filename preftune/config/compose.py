"""A stage's config is composed from small groups, not inherited.

``compose("DPOConfig", doc, RunGroup, OptimGroup, ..., LossGroup)`` makes one frozen dataclass with
every key of those groups as a plain attribute (``cfg.beta``, ``cfg.learning_rate``): a stage holds
exactly the keys it uses, with the defaults it sets. Building one — from Python keywords, a YAML file
or the command line — reads every value by its key's type, runs every group's ``check`` and the stage's
own, and raises one :class:`~preftune.errors.ConfigError` with every problem found, each with its fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from typing import Any

from preftune.config.fields import Problems, check_choices
from preftune.config.parse import coerce

Check = Callable[[Any, Problems], None]


def compose(name: str, doc: str, *groups: type, defaults: dict[str, Any] | None = None,
            helps: dict[str, str] | None = None, without: dict[str, str] | None = None,
            check: Check | None = None) -> type:
    """A frozen config class with the keys of ``groups`` (in order).

    ``defaults``/``helps``: this stage's default and meaning of a key; ``without``: keys this stage does
    not take (from these groups or others), each with the reason shown to a user who sets it; ``check``: the stage's
    checks across groups (after each group's own ``check``).
    """
    defaults, helps, without = defaults or {}, helps or {}, without or {}
    spec, owner = [], {}
    for group in groups:
        hints = typing.get_type_hints(group)
        for f in dataclasses.fields(group):
            if f.name in without:
                continue
            if f.name in owner:
                raise TypeError(f"{name}: key {f.name!r} is in both {owner[f.name].__name__} and {group.__name__}")
            owner[f.name] = group
            spec.append((f.name, hints[f.name], _field(f, defaults.get(f.name, dataclasses.MISSING),
                                                       helps.get(f.name))))
    stray = (set(defaults) | set(helps)) - set(owner)
    if stray:
        raise TypeError(f"{name}: defaults/helps name keys none of its groups has: {sorted(stray)}")

    cls = dataclasses.make_dataclass(name, spec, frozen=True, init=False)
    cls.__module__ = "preftune.config"  # where it is imported from (pickle, repr)
    cls.__doc__ = doc
    cls.groups = groups
    cls.key_group = {k: g for k, g in owner.items()}
    cls.left_out = dict(without)
    cls.stage_check = staticmethod(check) if check else None
    cls.__init__ = _init
    return cls


def _field(f: dataclasses.Field, default: Any, help: str | None) -> dataclasses.Field:
    metadata = dict(f.metadata)
    if help is not None:
        metadata["help"] = help
    if default is dataclasses.MISSING:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _init(self: Any, **values: Any) -> None:
    cls = type(self)
    p = Problems()
    fields = cls.__dataclass_fields__
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            p.add(unknown_key_message(cls, key))
    for name, f in fields.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = coerce(name, values[name], hints[name], p) if name in values else default
        object.__setattr__(self, name, default if value is dataclasses.MISSING else value)
    check_choices(self, p)
    for group in cls.groups:
        if hasattr(group, "check"):
            group.check(self, p)
    if cls.stage_check is not None:
        cls.stage_check(self, p)
    p.raise_if_any()


def unknown_key_message(cls: type, key: str) -> str:
    """The fix for a key this stage does not take: why it is left out, or what it is probably called."""
    from preftune.config.keymap import hint_for

    hint = hint_for(cls, key)
    if hint:
        return f"unknown config key {key!r} for {cls.__name__}: {hint}"
    near = difflib.get_close_matches(key, cls.__dataclass_fields__, n=3)
    suggestion = f" (did you mean {', '.join(near)}?)" if near else ""
    return (f"unknown config key {key!r} for {cls.__name__}{suggestion}; "
            f"`preftune <stage> --help` lists every key")


def is_composed(cls: type) -> bool:
    return getattr(cls, "__init__", None) is _init
