"""Step 1½: the row formats of published datasets, mapped onto the fields render reads.

Render reads fixed keys — ``prompt``, ``chosen``, ``rejected``, ``completion``, ``completions``,
``scores``, ``label``, ``messages`` and ``system`` — and names every problem by the column it came
from (``Record.labels``). :func:`prepare` maps a raw row onto those keys:

* **Column mapping** (:class:`RowFormat`): ``prompt_field``, ``chosen_field``, ``rejected_field``
  and ``system_field`` name the columns that hold them, so Intel/orca_dpo_pairs rows
  (``system, question, chosen, rejected``) train with ``prompt_field=question system_field=system``.
  An empty system text adds no message; a non-empty one becomes the conversation's system message.
* **UltraFeedback** (openbmb/UltraFeedback): ``{instruction, completions: [{response, overall_score,
  fine-grained_score, annotations: {aspect: {Rating, ...}}}]}``. ``ultrafeedback_score`` picks the
  score of a completion: ``mean_aspect`` (the mean of the numeric aspect ratings, "N/A" left out:
  what HuggingFaceH4/ultrafeedback_binarized ranks by), ``overall_score``, ``fine-grained_score``,
  or one aspect (``helpfulness``, ``honesty``, ``instruction_following``, ``truthfulness``).
  ``ultrafeedback_pairs`` builds the pair: ``best_vs_random`` (the best completion against one of
  the strictly worse ones drawn with a per-row seed, as the H4 binarization did) or
  ``best_vs_worst``. For ranked lists (plackett_luce) every scored completion is kept with its score.
  A row with fewer than two scored completions, or no strictly worse one, is dropped and counted.
* **Other layouts**: a preference row that has no ``chosen``/``rejected`` but has the fields of
  another layout (KTO's ``completion`` + ``label``, a ranking's ``completions``, SFT's ``messages``)
  is an error that names that layout and the setting that trains on it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from preftune.data.load import Record
from preftune.errors import ConfigError, DataError, SkipExample

__all__ = ["ASPECTS", "PAIRINGS", "RowFormat", "SCORES", "prepare"]

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
SCORES = ("mean_aspect", "overall_score", "fine-grained_score", *ASPECTS)
PAIRINGS = ("best_vs_random", "best_vs_worst")
TOO_FEW_SCORED = "UltraFeedback row with fewer than 2 scored completions"
NO_WORSE = "UltraFeedback row whose completions all tie"


@dataclass(frozen=True)
class RowFormat:
    """Which columns hold what, and how UltraFeedback rows become pairs (module docstring)."""

    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    system_field: str | None = None
    ultrafeedback_score: str = "mean_aspect"
    ultrafeedback_pairs: str = "best_vs_random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ultrafeedback_score not in SCORES:
            raise ConfigError(f"ultrafeedback_score must be one of {', '.join(SCORES)}, got {self.ultrafeedback_score!r}")
        if self.ultrafeedback_pairs not in PAIRINGS:
            raise ConfigError(f"ultrafeedback_pairs must be one of {', '.join(PAIRINGS)}, "
                              f"got {self.ultrafeedback_pairs!r}")
        for key in ("prompt_field", "chosen_field", "rejected_field", "system_field"):
            if getattr(self, key) == "":
                raise ConfigError(f"{key} must name a column, got an empty string")


def prepare(record: Record, fmt: RowFormat, layout: str, index: int) -> Record:
    """``record`` with its fields under the keys render reads, labelled by their source columns.

    ``layout`` is what the builder makes (a name in ``preftune.data.layouts.LAYOUTS``); ``index`` (the row's position in its
    source) seeds the per-row random choice of ``best_vs_random``.
    """
    if is_ultrafeedback(record.fields):
        return _ultrafeedback(record, fmt, layout, index)
    fields = dict(record.fields)
    labels = dict(record.labels)
    if fmt.system_field is None:
        fields.pop("system", None)  # a system column is used only when system_field names it
    mapping = {"prompt": fmt.prompt_field, "system": fmt.system_field}
    if layout == "preference":
        mapping.update(chosen=fmt.chosen_field, rejected=fmt.rejected_field)
    for key, column in mapping.items():
        if column is None or column == key:
            continue
        fields.pop(key, None)  # the mapped column replaces a same-named one
        if column in record.fields:
            fields[key] = fields.pop(column)
        labels[key] = labels.get(column, column)
    out = Record(fields, record.origin, labels, record.text_cells)
    if layout == "preference":
        _require_pair_fields(out)
    return out


def is_ultrafeedback(fields: Mapping[str, Any]) -> bool:
    completions = fields.get("completions")
    return (isinstance(completions, (list, tuple)) and bool(completions)
            and all(isinstance(c, Mapping) and "response" in c for c in completions))


def _ultrafeedback(record: Record, fmt: RowFormat, layout: str, index: int) -> Record:
    origin = record.origin
    prompt_key = fmt.prompt_field if fmt.prompt_field in record.fields else "instruction"
    base = {"prompt": record.fields.get(prompt_key)}
    labels = {"prompt": prompt_key}
    if fmt.system_field is not None:
        base["system"] = record.fields.get(fmt.system_field)
        labels["system"] = fmt.system_field
    scored = []
    for i, completion in enumerate(record.fields["completions"]):
        score = _score(completion, fmt.ultrafeedback_score, origin, i)
        if score is not None:
            scored.append((i, completion["response"], score))
    if layout in ("prompt", "completion", "unpaired"):
        if layout != "prompt":
            raise DataError(f"{origin}: an UltraFeedback row (instruction + scored completions) holds preferences; "
                            "train on it with `preftune dpo` or `preftune rm`")
        return Record(base, origin, labels, record.text_cells)
    if len(scored) < 2:
        raise SkipExample(TOO_FEW_SCORED, origin)
    if layout == "ranking":
        base.update(completions=[r for _, r, _ in scored], scores=[s for _, _, s in scored])
        labels.update({f"completions[{k}]": f"completions[{i}].response" for k, (i, _, _) in enumerate(scored)})
        return Record(base, origin, labels, record.text_cells)
    best = max(scored, key=lambda t: t[2])  # the first of equal bests, as max() keeps the first
    worse = [t for t in scored if t[2] < best[2]]
    if not worse:
        raise SkipExample(NO_WORSE, origin)
    if fmt.ultrafeedback_pairs == "best_vs_worst":
        rejected = min(worse, key=lambda t: t[2])
    else:
        rejected = random.Random(f"{fmt.seed}:{index}").choice(worse)
    base.update(chosen=best[1], rejected=rejected[1])
    labels.update(chosen=f"completions[{best[0]}].response", rejected=f"completions[{rejected[0]}].response")
    return Record(base, origin, labels, record.text_cells)


def _score(completion: Mapping[str, Any], how: str, origin: str, i: int) -> float | None:
    """The completion's score, or None when it has none (every rating "N/A")."""
    if how in ("overall_score", "fine-grained_score"):
        return _number(completion.get(how), f"completions[{i}].{how}", origin)
    annotations = completion.get("annotations")
    if not isinstance(annotations, Mapping):
        raise DataError(f"{origin}: field 'completions[{i}].annotations' must be an object of aspect ratings, "
                        f"got {type(annotations).__name__}")
    aspects = [how] if how in ASPECTS else [a for a in ASPECTS if a in annotations]
    ratings = []
    for aspect in aspects:
        entry = annotations.get(aspect)
        rating = entry.get("Rating") if isinstance(entry, Mapping) else None
        if rating is None:
            raise DataError(f"{origin}: missing field 'completions[{i}].annotations.{aspect}.Rating' "
                            f"(ultrafeedback_score={how})")
        if isinstance(rating, str) and rating.strip().upper() == "N/A":
            continue
        ratings.append(_number(rating, f"completions[{i}].annotations.{aspect}.Rating", origin))
    return sum(ratings) / len(ratings) if ratings else None


def _number(value: Any, where: str, origin: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise DataError(f"{origin}: field '{where}' must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{origin}: field '{where}' must be a number (or \"N/A\"), got {value!r}") from None
    if number != number:  # NaN: a missing score in a Parquet/pandas column
        return None
    return number


def _require_pair_fields(record: Record) -> None:
    fields = record.fields
    missing = [key for key in ("chosen", "rejected") if fields.get(key) is None]
    if not missing:
        return
    if "completion" in fields and "label" in fields:
        hint = "the row has 'completion' and 'label', the layout of unpaired (KTO) data: train on it with loss_type=kto"
    elif isinstance(fields.get("completions"), (list, tuple, str)):
        hint = ("the row has 'completions', a ranked list: train on it with loss_type=plackett_luce (or, for "
                "UltraFeedback rows, check that each completion has a 'response')")
    elif "messages" in fields or "completion" in fields:
        hint = "the row looks like SFT data ('messages' or 'completion'): train on it with `preftune sft`"
    else:
        return  # render reports the missing field by its column name
    column = record.label(missing[0])
    null = " (it is null)" if column in fields or missing[0] in fields else ""
    raise DataError(f"{record.origin}: missing field '{column}'{null}; {hint}, or name your columns with "
                    "chosen_field / rejected_field")
