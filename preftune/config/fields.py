"""The pieces every config group is written with: a field with its meaning, and checks that collect.

A check never raises: it adds a line to :class:`Problems`, so a config with five mistakes reports five
lines at once. Every range message reads ``<key> must be <allowed range>, got <value>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from preftune.errors import ConfigError


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A config field: its default and the one-line meaning ``--help`` prints (``choices=`` optional)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


class Problems:
    """Every problem found in one config, in the order found. ``bad`` keys had a value of the wrong type
    (already reported): range checks skip them, so one mistake is reported once.

    The checks a group's ``check(self, p)`` runs are methods, e.g. ``p.positive(self, "lora_r")``: each
    reads the keys of ``config`` and adds a line for every value out of its range."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.bad: set[str] = set()

    def add(self, message: str, key: str | None = None) -> None:
        if key is not None and key in self.bad:
            return
        self.items.append(message)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)

    def require(self, config: Any, key: str, why: str) -> None:
        if not getattr(config, key):
            self.add(f"{key} {why}", key)

    def positive(self, config: Any, *keys: str) -> None:
        for key in keys:
            if getattr(config, key) <= 0:
                self.add(f"{key} must be > 0, got {getattr(config, key)}", key)

    def non_negative(self, config: Any, *keys: str) -> None:
        for key in keys:
            if getattr(config, key) < 0:
                self.add(f"{key} must be >= 0, got {getattr(config, key)}", key)

    def positive_or_null(self, config: Any, *keys: str) -> None:
        for key in keys:
            value = getattr(config, key)
            if value is not None and value <= 0:
                self.add(f"{key} must be > 0 or null, got {value}", key)

    def in_range(self, config: Any, key: str, interval: str) -> None:
        """``interval`` in the usual notation, e.g. ``"[0, 1)"``: it is both the check and the message."""
        value = getattr(config, key)
        if value is None:
            return
        low, high = (float(x) for x in interval[1:-1].split(","))
        above = value >= low if interval[0] == "[" else value > low
        below = value <= high if interval[-1] == "]" else value < high
        if not (above and below):
            self.add(f"{key} must be in {interval}, got {value}", key)


def default_of(config: Any, key: str) -> Any:
    f = type(config).__dataclass_fields__[key]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def changed(config: Any, *keys: str) -> list[str]:
    """The keys among ``keys`` (those this stage has) whose value differs from the stage's default."""
    fields = type(config).__dataclass_fields__
    return [k for k in keys if k in fields and getattr(config, k) != default_of(config, k)]


def check_choices(config: Any, p: Problems) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if choices and v is not None and v not in choices:
                p.add(f"{f.name} must be one of {', '.join(map(str, choices))}, got {v!r}", f.name)
