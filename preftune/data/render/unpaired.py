"""Rendering KTO's unpaired examples (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization"): ``{prompt, completion, label}``, one completion judged desirable or not, with no counterpart to
compare it with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preftune.data.fields import check_texts, field_value, render_texts, use_template, with_system
from preftune.data.load import Record
from preftune.errors import DataError

__all__ = ["UnpairedText", "render_unpaired"]

# What a label cell may say, lower-cased: CSV has no booleans, and 0/1 is the other common spelling.
_LABEL_STRINGS = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class UnpairedText:
    """A rendered KTO example: one prompt, one completion, and whether the completion is desirable."""

    prompt: str
    completion: str
    label: bool
    origin: str


def render_unpaired(record: Record, tokenizer: Any, *, use_chat_template: bool | None = None) -> UnpairedText:
    """Render a KTO record ``{prompt, completion, label}`` (Ethayarajh et al. 2024).

    ``prompt`` and ``completion`` follow the SFT/preference rules; ``label`` says whether the
    completion is desirable: a bool, 0/1, or the strings "true"/"false"/"1"/"0" in any case, spaces
    around them ignored (a CSV cell can only hold a string).
    """
    origin = record.origin
    prompt = field_value(record, "prompt")
    completion = field_value(record, "completion")
    label = _label(record)
    templated = use_template(tokenizer, use_chat_template)
    names = (record.label("prompt"), record.label("completion"))
    values = dict(zip(names, (prompt, completion)))
    check_texts(values, tokenizer, origin, templated=templated, completions=names[1:])
    prompt = with_system(prompt, record, templated)
    prompt_text, (completion_text,) = render_texts(prompt, [(names[1], completion)], tokenizer, origin, templated)
    return UnpairedText(prompt_text, completion_text, label, origin)


def _label(record: Record) -> bool:
    origin = record.origin
    value = record.fields.get("label")
    if value is None:
        null = " (it is null)" if "label" in record.fields else ""
        raise DataError(f"{origin}: missing field 'label'{null}")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in _LABEL_STRINGS:
        return _LABEL_STRINGS[value.strip().lower()]
    raise DataError(
        f"{origin}: field 'label' must be true/false (a boolean, 0/1, or the string \"true\", \"false\", "
        f"\"1\" or \"0\"), got {value!r}"
    )
