"""From text to typed values: YAML files, ``key=value`` / ``--key value`` overrides, Python keywords.

A value is read as the text the user wrote (:class:`Text`) and interpreted by the type of the key it
goes to: a string key keeps its text exactly (``hub_model_id: 0777`` stays ``"0777"``, ``run_name:
1:30`` stays ``"1:30"``, ``output_dir=runs/#3`` keeps its ``#``); a number, boolean, list or mapping key
reads the text as YAML (``5e-7``, ``true``, ``[sigmoid, ipo]``, ``{num_cycles: 2}``). Python callers get
the same coercion: ``DPOConfig(loss_type="ipo", learning_rate="5e-7")``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from preftune.config.fields import Problems
from preftune.errors import ConfigError


class Text(str):
    """A value exactly as written in a YAML file (unquoted) or on the command line, not yet interpreted."""


class _RawLoader(yaml.SafeLoader):
    """SafeLoader that leaves every unquoted scalar as :class:`Text` (quoted ones are plain ``str``)."""


_RawLoader.yaml_implicit_resolvers = {}


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return Text(value) if node.style is None else str(value)


_RawLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)


MAX_YAML_VALUES = 100_000   # far more than any config; a "billion laughs" alias bomb expands past it


def load_yaml_text(text: str) -> Any:
    """YAML with unquoted scalars kept as :class:`Text` (the key's type interprets them later). Aliases
    that would expand to more than MAX_YAML_VALUES values, and nesting deeper than Python can follow,
    are refused with a short message before anything is built."""
    loader = _RawLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_values(node, {}) > MAX_YAML_VALUES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?); "
                                 "refusing to build it")
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError("it is nested too deeply to read") from None
    finally:
        loader.dispose()


def _expanded_values(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (each shared node counted at
    every place it appears; computed once per node, so an alias bomb costs no time here)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1                     # a node that contains itself counts once
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_values(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_values(k, memo) + _expanded_values(v, memo) for k, v in node.value)
    else:
        total = 1
    memo[id(node)] = total
    return total


def shown_error(error: Exception, limit: int = 400) -> str:
    text = str(error)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message stays a line, whatever the value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def resolve(value: Any) -> Any:
    """Plain YAML meaning of every :class:`Text` inside ``value`` (for keys with no string type)."""
    if isinstance(value, Text):
        return yaml.safe_load(value) if value.strip() else None
    if isinstance(value, dict):
        return {resolve(k): resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


Override = typing.Union[str, tuple[str, Any]]


def read_settings(path: str | Path | None = None, overrides: typing.Sequence[Override] = (), **values: Any
                  ) -> dict[str, Any]:
    """The raw key → value mapping of a YAML file, then overrides (``"key=value"`` or ``(key, value)``),
    then keyword values; text stays :class:`Text` until the key's type reads it."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = load_yaml_text(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {shown_error(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of key: value")
        raw.update({str(k): v for k, v in loaded.items()})
    for item in overrides:
        if isinstance(item, tuple):
            key, value = item
        else:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} must look like key=value")
            value = Text(text)
        raw[key.strip()] = value
    raw.update(values)
    return raw


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def cli_overrides(tokens: typing.Sequence[str], valued: typing.Container[str] = ()) -> list[Override]:
    """Command-line settings in any of the spellings TRL users type: ``key=value``, ``--key value``,
    ``--key=value``, ``--key v1 v2`` (a list), ``--flag`` alone (true, as ``trl dpo --bf16``) and
    ``--no_flag`` (false, as ``--no_remove_unused_columns``).

    ``valued``: keys that are never a bare flag (no boolean type), so the word after ``--key`` is always
    their value, even one with ``=`` in it (``--optim_args momentum=0.9``)."""
    out: list[Override] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            if not _KEY.match(token):
                raise ConfigError(f"argument {token!r}: settings look like key=value or --key value")
            out.append(token)
            i += 1
            continue
        key, sep, text = token[2:].partition("=")
        key = key.replace("-", "_")
        if sep:
            out.append((key, Text(text)))
            i += 1
            continue
        values = []
        i += 1
        if key in valued and i < len(tokens) and not tokens[i].startswith("--"):
            values.append(Text(tokens[i]))
            i += 1
        while i < len(tokens) and not tokens[i].startswith("--") and not _KEY.match(tokens[i]):
            values.append(Text(tokens[i]))
            i += 1
        if not values and key.startswith("no_"):   # transformers' HfArgumentParser: --no_X sets X false
            out.append((key[3:], Text("false")))
            continue
        out.append((key, Text("true") if not values else values[0] if len(values) == 1 else values))
    return out


# ----------------------------------------------------------------------------------------------------
# Interpreting a value by the type of its key


def coerce(key: str, value: Any, tp: Any, p: Problems) -> Any:
    """``value`` read as type ``tp``; a mismatch is added to ``p`` (and ``key`` marked bad)."""
    try:
        return _coerce(key, value, tp)
    except ConfigError as e:
        p.add(str(e))
        p.bad.add(key)
        return dataclasses.MISSING


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return resolve(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and (value is None or (isinstance(value, Text) and
                                                                      resolve(value) is None)):
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {shown(value)}")
    if origin is list or tp is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, Text):
            parsed = load_yaml_text(value) if value.lstrip().startswith("[") else value
            value = parsed
        items = list(value) if isinstance(value, (list, tuple)) else [value]  # "ipo" is ["ipo"]
        return [_coerce(key, v, item_tp) for v in items]
    if origin is dict or tp is dict:
        mapping = resolve(load_yaml_text(value) if isinstance(value, str) else value)
        if not isinstance(mapping, dict):
            raise ConfigError(f"{key} must be a mapping (e.g. {{name: value}}), got {shown(mapping)}")
        return mapping
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {shown(value)}")
    value = resolve(Text(value)) if isinstance(value, str) else value  # "5e-7", "true": read as YAML
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {shown(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key} must be a number, got {shown(value)}")
        if not math.isfinite(number):
            # nan slips through every `<= 0` range check, and inf is no setting of any key.
            raise ConfigError(f"{key} must be a finite number, got {shown(value)}")
        return number
    raise ConfigError(f"{key}: unsupported type {tp}")


def valued_keys(cls: type) -> set[str]:
    """The keys of config class ``cls`` whose type admits no boolean (never a bare ``--flag``)."""
    out = set()
    for name, tp in typing.get_type_hints(cls).items():
        if tp is not bool and bool not in typing.get_args(tp) and tp is not Any:
            out.add(name)
    return out


def type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def show_default(default: Any) -> str:
    if default == "":
        return "(required)"
    shown = yaml.safe_dump(default, default_flow_style=True).strip()
    return shown.removesuffix("\n...").removesuffix("...").strip()
