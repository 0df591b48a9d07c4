"""Rendering ranked lists (listwise DPO under Plackett–Luce; Rafailov et al. 2023, Appendix A.3):
``{prompt, completions: [best, ..., worst], scores?}``. The Plackett–Luce likelihood is of a strict order, so a
list whose scores tie cannot be expressed and is skipped, not guessed at."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from preftune.data.fields import (
    TextOrMessages,
    check_texts,
    field_value,
    render_texts,
    use_template,
    with_system,
)
from preftune.data.load import Record
from preftune.errors import DataError, SkipExample

__all__ = ["RankingText", "render_ranking"]

TIED_SCORES = "tied scores in a ranking"


@dataclass(frozen=True)
class RankingText:
    """A rendered ranked list: a shared prompt and its completions, best first."""

    prompt: str
    completions: tuple[str, ...]
    origin: str


def render_ranking(record: Record, tokenizer: Any, *, use_chat_template: bool | None = None) -> RankingText:
    """Render a ranked list ``{prompt, completions: [best, ..., worst], scores?}`` for Plackett–Luce.

    Each completion is a string or a message list, rendered against the same prompt as
    render_preference renders chosen and rejected. With ``scores`` (one number per completion,
    higher is better) the completions are put in descending score order first; two equal scores
    raise ``SkipExample(TIED_SCORES)``, since a Plackett–Luce ranking is strict.
    """
    origin = record.origin
    prompt = field_value(record, "prompt")
    completions = _completion_list(record)
    scores = _scores(record, len(completions))
    templated = use_template(tokenizer, use_chat_template)
    names = [record.label(f"completions[{i}]") for i in range(len(completions))]
    values = {record.label("prompt"): prompt, **dict(zip(names, completions))}
    check_texts(values, tokenizer, origin, templated=templated, completions=names)
    prompt = with_system(prompt, record, templated)
    order = list(range(len(completions)))
    if scores is not None:
        if len(set(scores)) < len(scores):
            raise SkipExample(TIED_SCORES, origin)
        order.sort(key=lambda i: -scores[i])
    prompt_text, texts = render_texts(prompt, [(names[i], completions[i]) for i in order], tokenizer, origin, templated)
    return RankingText(prompt_text, tuple(texts), origin)


def _completion_list(record: Record) -> list[TextOrMessages]:
    """The ``completions`` field, each element validated like any other text-or-messages field."""
    origin = record.origin
    items = _json_list(record, "completions")
    if len(items) < 2:
        raise DataError(
            f"{origin}: field 'completions' needs at least 2 completions to rank, got {len(items)}"
        )
    # Each element is checked as a field of its own, so messages name e.g. 'completions[2]'.
    names = [f"completions[{i}]" for i in range(len(items))]
    return [field_value(Record({name: c}, origin, {name: record.label(name)}), name) for name, c in zip(names, items)]


def _scores(record: Record, count: int) -> list[float] | None:
    origin = record.origin
    if record.fields.get("scores") is None:
        return None
    scores = _json_list(record, "scores")
    if len(scores) != count:
        raise DataError(
            f"{origin}: field 'scores' has {len(scores)} scores but 'completions' has {count} completions"
        )
    for i, score in enumerate(scores):
        # bool is an int in Python; a true/false score is a mistake, not the number 1/0.
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise DataError(f"{origin}: field 'scores[{i}]' must be a number, got {score!r}")
    return [float(s) for s in scores]


def _json_list(record: Record, name: str) -> list:
    """A list field; in a CSV file, a cell that is a JSON list too (a CSV cell can only hold a string)."""
    origin = record.origin
    value = record.fields.get(name)
    if value is None:
        null = " (it is null)" if name in record.fields else ""
        raise DataError(f"{origin}: missing field '{name}'{null}")
    if record.text_cells and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except RecursionError:
            raise DataError(f"{origin}: field '{name}' holds JSON nested too deeply to read") from None
        except ValueError:
            pass  # reported below as a string
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{origin}: field '{name}' must be a list, got {type(value).__name__}")
    return list(value)
