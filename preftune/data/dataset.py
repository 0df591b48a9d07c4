"""Builders that run load → render → tokenize over a whole source and account for every drop.

Malformed data (DataError) stops the build: silently training on a fraction of a broken file is
worse than failing. Valid-but-unusable examples (SkipExample, e.g. fully truncated) are dropped
and counted by reason, and ``summary()`` reports the counts so nothing disappears unnoticed; it
also counts the prompts and completions that were cut to fit, which lose tokens without being
dropped. docs/bad_inputs.md lists every bad input and what happens to it.

KTO data needs one more step after its build: :func:`assign_kl_partners` gives every example a
mismatched completion for the KL reference point. It is a dataset step rather than a per-batch
shuffle so that the partners are fixed by a seed, hashed into ``fingerprint()``, and their
reference log-probs can be cached like every other row's.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from preftune.data.example import Example
from preftune.data.formats import RowFormat, prepare
from preftune.data.load import DEFAULT_MAX_ROW_BYTES, Record, load_records, source_name
from preftune.data.render.completion import render_completion
from preftune.data.render.preference import render_preference
from preftune.data.render.ranking import render_ranking
from preftune.data.render.unpaired import render_unpaired
from preftune.data.tokenize import (
    TokenizedUnpaired,
    tokenize_completion,
    tokenize_preference,
    tokenize_ranking,
    tokenize_unpaired,
)
from preftune.errors import ConfigError, DataError, SkipExample

__all__ = [
    "BuiltDataset",
    "DataSettings",
    "assign_kl_partners",
    "build_completion_dataset",
    "build_preference_dataset",
    "build_ranking_dataset",
    "build_unpaired_dataset",
]


@dataclass(frozen=True)
class DataSettings:
    """Everything besides the source and tokenizer that determines the token ids."""

    max_length: int | None = 512
    max_prompt_length: int | None = 256
    use_chat_template: bool | None = None  # None: use it iff the tokenizer has one
    max_completion_length: int | None = None
    truncation_mode: str = "keep_start"     # or keep_end (data/tokenize.py)
    add_eos: bool = True
    row_format: RowFormat = field(default_factory=RowFormat)  # which columns hold what (data/formats.py)
    max_row_bytes: int | None = DEFAULT_MAX_ROW_BYTES  # a bigger record is an error (decides no token id)

    def __post_init__(self) -> None:
        # Fail at configuration time, not on the first example of a long build.
        lengths = (self.max_length, self.max_prompt_length)
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2 or null, got {self.max_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length must be >= 1 or null, got {self.max_prompt_length}")
        if None not in lengths and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"max_prompt_length must be < max_length ({self.max_length}), got {self.max_prompt_length}"
            )


@dataclass
class BuiltDataset:
    """Tokenized examples in source order (minus drops), the drop and cut counts, and the settings used.

    ``truncated`` counts sequences of the kept examples that lost tokens to the length limits
    (``prompts cut from the left``, ``completions cut from the right``).
    """

    examples: list[Example]
    dropped: Counter[str]
    source: str
    settings: DataSettings = field(default_factory=DataSettings)
    truncated: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        """One line for the run log.

        E.g. ``prefs.jsonl: 998 examples, dropped 2 (completion fully truncated: 2)``; unpaired
        data also gives its label balance: ``kto.jsonl: 10 examples, 7 desirable / 3 undesirable,
        dropped 0``. Cuts, if any, follow: ``, cut to fit (prompts cut from the left: 3)``.
        """
        total = sum(self.dropped.values())
        text = f"{self.source}: {len(self.examples)} examples"
        counts = self.label_counts
        if counts is not None:
            text += f", {counts[0]} desirable / {counts[1]} undesirable"
        text += f", dropped {total}"
        if total:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
            text += f" ({reasons})"
        if sum(self.truncated.values()):
            cuts = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.truncated.items()) if n)
            text += f", cut to fit ({cuts})"
        return text

    def fingerprint(self) -> str:
        """sha256 over the settings and every example's ids, in order: the cache key for reference log-probs.

        Prompt/completion boundaries are hashed too (the same ids split differently give a
        different loss mask). Origins and the source name are not: moving a file must not
        invalidate a cache whose log-probs are still correct.
        """
        h = hashlib.sha256()
        # The row format, the truncation mode / completion cap and the row size limit are not hashed: what
        # they change shows in the ids, and hashing them would move every fingerprint made before they existed.
        unhashed = ("row_format", "max_completion_length", "truncation_mode", "max_row_bytes")
        settings = {k: v for k, v in asdict(self.settings).items() if k not in unhashed}
        h.update(json.dumps(settings, sort_keys=True).encode())
        for ex in self.examples:  # each layout says what of its examples is hashed
            h.update(json.dumps(ex.fingerprint_parts(), separators=(",", ":"), sort_keys=True, default=str).encode())
            h.update(b"\n")  # unambiguous record separator; JSON never contains a raw newline
        return h.hexdigest()

    @property
    def num_columns(self) -> int:
        """The most sequences any example has: 1 for SFT, 2 for pairs and KTO (with the KL partner), K for lists.

        The width of a per-(example, column) table such as the cached reference log-probs.
        """
        return max((len(ex.completion_columns) for ex in self.examples), default=0)

    @property
    def label_counts(self) -> tuple[int, int] | None:
        """``(desirable, undesirable)`` for unpaired (KTO) data, None for other kinds.

        KTO's weights are meant to be set from these (Ethayarajh et al. 2024 suggest
        λ_D n_D / (λ_U n_U) in [1, 4/3]).
        """
        labels = [ex.desirable for ex in self.examples if ex.desirable is not None]
        if not labels:
            return None
        return sum(labels), len(labels) - sum(labels)


def build_preference_dataset(
    source: Any, tokenizer: Any, settings: DataSettings, *, split: str = "train"
) -> BuiltDataset:
    """Load, render and tokenize every preference record of ``source``; see the module docstring."""

    def step(record: Record, notes: Counter[str]) -> Example:
        text = render_preference(record, tokenizer, use_chat_template=settings.use_chat_template)
        _require_answer(tokenizer, text.origin, {"field 'chosen'": text.chosen, "field 'rejected'": text.rejected})
        return tokenize_preference(text, tokenizer, **_limits(settings), notes=notes)

    return _build(source, settings, split, step, "preference")


def build_completion_dataset(
    source: Any,
    tokenizer: Any,
    settings: DataSettings,
    *,
    split: str = "train",
    completion_field: str = "completion",
) -> BuiltDataset:
    """Load, render and tokenize every SFT record of ``source``; see the module docstring."""

    def step(record: Record, notes: Counter[str]) -> Example:
        text = render_completion(
            record, tokenizer, use_chat_template=settings.use_chat_template, completion_field=completion_field
        )
        _require_answer(tokenizer, text.origin, {f"field '{text.field}'": text.completion})
        return tokenize_completion(text, tokenizer, **_limits(settings), notes=notes)

    return _build(source, settings, split, step, "completion")


def build_unpaired_dataset(
    source: Any, tokenizer: Any, settings: DataSettings, *, split: str = "train"
) -> BuiltDataset:
    """Load, render and tokenize every KTO record ``{prompt, completion, label}`` of ``source``.

    The examples have no KL partner yet: run :func:`assign_kl_partners` before collating.
    """

    def step(record: Record, notes: Counter[str]) -> Example:
        text = render_unpaired(record, tokenizer, use_chat_template=settings.use_chat_template)
        _require_answer(tokenizer, text.origin, {"field 'completion'": text.completion})
        return tokenize_unpaired(text, tokenizer, **_limits(settings), notes=notes)

    return _build(source, settings, split, step, "unpaired")


def build_ranking_dataset(
    source: Any, tokenizer: Any, settings: DataSettings, *, split: str = "train"
) -> BuiltDataset:
    """Load, render and tokenize every ranked list ``{prompt, completions, scores?}`` of ``source``."""

    def step(record: Record, notes: Counter[str]) -> Example:
        text = render_ranking(record, tokenizer, use_chat_template=settings.use_chat_template)
        # By rank, not by index in the file: scores may have reordered the list.
        ranks = {f"field 'completions' (rank {r})": c for r, c in enumerate(text.completions, start=1)}
        _require_answer(tokenizer, text.origin, ranks)
        return tokenize_ranking(text, tokenizer, **_limits(settings), notes=notes)

    return _build(source, settings, split, step, "ranking")


def _limits(settings: DataSettings) -> dict[str, Any]:
    return {
        "max_length": settings.max_length,
        "max_prompt_length": settings.max_prompt_length,
        "add_eos": settings.add_eos,
        "max_completion_length": settings.max_completion_length,
        "truncation_mode": settings.truncation_mode,
    }


def _require_answer(tokenizer: Any, origin: str, completions: dict[str, str]) -> None:
    """Training data must answer: a completion rendered to the EOS alone (an answer message with
    empty content) would teach "stop at once" from a row whose answer is simply missing.

    ``completions`` maps where each one is (``"field 'chosen'"``) to its rendered text.
    """
    eos = getattr(tokenizer, "eos_token", None)
    for where, text in completions.items():
        if not text or text == eos:
            raise DataError(
                f"{origin}: {where} is an empty completion (nothing but EOS, so the row would only "
                "teach stopping at once)"
            )


def assign_kl_partners(dataset: BuiltDataset, seed: int) -> BuiltDataset:
    """Give every KTO example another example's completion for the KL reference point.

    KTO estimates z_ref = KL(π_θ ‖ π_ref) from mismatched pairs (x_i, y_j), j ≠ i (see
    :mod:`preftune.losses.unpaired`). A permutation ``p`` of the examples is drawn with
    ``random.Random(seed)`` and example ``p[i]`` gets the completion of ``p[(i + 1) % N]``: one
    cycle through all of them, so no example is its own partner and every completion is used
    exactly once. A partner completion is cut from the right to fit ``settings.max_length`` after
    this example's prompt (never to nothing: this prompt already fits with at least one token of
    its own completion). Returns a new dataset; ``dataset`` is left as it was.
    """
    examples = dataset.examples
    for ex in examples:
        if not isinstance(ex, TokenizedUnpaired):
            raise TypeError(f"assign_kl_partners needs unpaired (KTO) examples, got {type(ex).__name__}")
    n = len(examples)
    if n < 2:
        raise DataError(
            f"{dataset.source}: KTO needs at least 2 examples for its KL estimate (each prompt is paired "
            f"with another example's completion), got {n}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    max_length = dataset.settings.max_length
    partnered: list[Example] = list(examples)
    for i, target in enumerate(order):
        ex = examples[target]
        kl = examples[order[(i + 1) % n]].completion_ids
        if max_length is not None:
            kl = kl[: max_length - len(ex.prompt_ids)]
        partnered[target] = replace(ex, kl_completion_ids=kl)
    return BuiltDataset(
        partnered, Counter(dataset.dropped), dataset.source, dataset.settings, Counter(dataset.truncated)
    )


def _build(
    source: Any, settings: DataSettings, split: str, step: Callable[[Record, Counter[str]], Example], layout: str
) -> BuiltDataset:
    name = source_name(source, split)
    records = load_records(source, split=split, max_row_bytes=settings.max_row_bytes)
    examples: list[Example] = []
    dropped: Counter[str] = Counter()
    truncated: Counter[str] = Counter()
    for index, raw in enumerate(records):
        notes: Counter[str] = Counter()  # per example: a dropped one counts as dropped only, not also as cut
        try:
            record = prepare(raw, settings.row_format, layout, index)
            examples.append(step(record, notes))
        except SkipExample as e:
            dropped[e.reason] += 1
            continue
        truncated.update(notes)
    if not examples:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items()))
        raise DataError(f"{name}: all {len(records)} examples were dropped ({reasons})")
    return BuiltDataset(examples, dropped, name, settings, truncated)
