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

    spec.append(("ignored_keys", dict[str, Any], dataclasses.field(
        default_factory=dict, compare=False, metadata={"help": "TRL / transformers settings given but ignored here "
                                                               "(each logged when the run starts); filled in when "
                                                               "built", "internal": True})))
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
    values, ignored = take_foreign_keys(cls, values, hints, p)
    for name, f in fields.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = coerce(name, values[name], hints[name], p) if name in values else default
        object.__setattr__(self, name, default if value is dataclasses.MISSING else value)
    if "ignored_keys" in fields:
        object.__setattr__(self, "ignored_keys", {**self.ignored_keys, **ignored})
    check_choices(self, p)
    for group in cls.groups:
        if hasattr(group, "check"):
            group.check(self, p)
    if cls.stage_check is not None:
        cls.stage_check(self, p)
    p.raise_if_any()


def take_foreign_keys(cls: type, values: dict[str, Any], hints: dict[str, Any], p: Problems
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keys of TRL / transformers that ``cls`` spells differently (mapped), ignores (returned, to be logged)
    or refuses (a problem with the reason); an unknown key is a problem with a suggestion."""
    from preftune.config.keymap import IGNORED, RENAMED, UNSUPPORTED, VALUE_FORMS

    fields = cls.__dataclass_fields__
    out: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, value in values.items():
        if key in VALUE_FORMS and key in fields:
            try:
                value = VALUE_FORMS[key](value)
            except ValueError as e:
                p.add(str(e))
                p.bad.add(key)
                continue
        rename = RENAMED.get(key)
        entry = UNSUPPORTED.get(key)
        if key in fields:
            out[key] = value
        elif rename is not None and (rename.key in fields or rename.key in values):
            _rename(key, value, rename, hints[rename.key], values, out, p)
        elif key in IGNORED or (key.startswith("vllm_") and cls.__name__ == "RLConfig"):
            ignored[key] = _plain(value)
        elif entry is not None and (not entry.stages or cls.__name__ in entry.stages):
            if _plain(value) in entry.harmless:
                ignored[key] = _plain(value)
            else:
                p.add(f"{key}={_plain(value)!r} is not supported: {entry.reason}")
        else:
            p.add(unknown_key_message(cls, key))
    return out, ignored


def _rename(key: str, value: Any, rename: Any, tp: Any, values: dict[str, Any], out: dict[str, Any],
            p: Problems) -> None:
    from preftune.config.keymap import SETS_NOTHING

    if rename.key in values:
        p.add(f"{key} and {rename.key} are both set: {key} is {rename.note or 'TRL’s name'} for {rename.key}; "
              f"give {rename.key} only")
        return
    if rename.values is None:
        out[rename.key] = value
        return
    plain = _plain(value)
    match = [new for old, new in rename.values.items() if old == plain and type(old) is type(plain)]
    if match:
        if match[0] is not SETS_NOTHING:
            out[rename.key] = match[0]
    elif rename.others_pass:
        out[rename.key] = value
    else:
        choices = ", ".join(map(str, rename.values))
        p.add(f"{key} must be one of {choices} (it sets {rename.key}), got {plain!r}")


def _plain(value: Any) -> Any:
    """A value as YAML reads it (the text of a command line or file, interpreted)."""
    from preftune.config.parse import resolve

    return resolve(value)


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
