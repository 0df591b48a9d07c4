"""Builders that run load → render → tokenize over a whole source and account for every drop.

Malformed data (DataError) stops the build: silently training on a fraction of a broken file is
worse than failing. Valid-but-unusable examples (SkipExample, e.g. fully truncated) are dropped
and counted by reason, and ``summary()`` reports the counts so nothing disappears unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from preftune.data.load import load_records
from preftune.data.render import render_completion, render_preference
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    tokenize_completion,
    tokenize_preference,
)
from preftune.errors import ConfigError, DataError, SkipExample

__all__ = ["BuiltDataset", "DataSettings", "build_completion_dataset", "build_preference_dataset"]

Example = TokenizedPreference | TokenizedCompletion


@dataclass(frozen=True)
class DataSettings:
    """Everything besides the source and tokenizer that determines the token ids."""

    max_length: int | None = 512
    max_prompt_length: int | None = 256
    use_chat_template: bool | None = None  # None: use it iff the tokenizer has one
    add_eos: bool = True

    def __post_init__(self) -> None:
        # Fail at configuration time, not on the first example of a long build.
        lengths = (self.max_length, self.max_prompt_length)
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length must be at least 1, got {self.max_prompt_length}")
        if None not in lengths and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"max_prompt_length ({self.max_prompt_length}) must be smaller than "
                f"max_length ({self.max_length})"
            )


@dataclass
class BuiltDataset:
    """Tokenized examples in source order (minus drops), the drop counts, and the settings used."""

    examples: list[Example]
    dropped: Counter[str]
    source: str
    settings: DataSettings = field(default_factory=DataSettings)

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        """One line for the run log.

        E.g. ``prefs.jsonl: 998 examples, dropped 2 (completion fully truncated: 2)``.
        """
        total = sum(self.dropped.values())
        text = f"{self.source}: {len(self.examples)} examples, dropped {total}"
        if total:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
            text += f" ({reasons})"
        return text

    def fingerprint(self) -> str:
        """sha256 over the settings and every example's ids, in order: the cache key for reference log-probs.

        Prompt/completion boundaries are hashed too (the same ids split differently give a
        different loss mask). Origins and the source name are not: moving a file must not
        invalidate a cache whose log-probs are still correct.
        """
        h = hashlib.sha256()
        h.update(json.dumps(asdict(self.settings), sort_keys=True).encode())
        for ex in self.examples:
            if isinstance(ex, TokenizedPreference):
                parts = ["P", ex.prompt_ids, ex.chosen_ids, ex.rejected_ids]
            else:
                parts = ["C", ex.prompt_ids, ex.completion_ids]
            h.update(json.dumps(parts, separators=(",", ":")).encode())
            h.update(b"\n")  # unambiguous record separator; JSON never contains a raw newline
        return h.hexdigest()


def build_preference_dataset(
    source: Any, tokenizer: Any, settings: DataSettings, *, split: str = "train"
) -> BuiltDataset:
    """Load, render and tokenize every preference record of ``source``; see the module docstring."""

    def step(record):
        text = render_preference(record, tokenizer, use_chat_template=settings.use_chat_template)
        return tokenize_preference(
            text,
            tokenizer,
            max_length=settings.max_length,
            max_prompt_length=settings.max_prompt_length,
            add_eos=settings.add_eos,
        )

    return _build(source, settings, split, step)


def build_completion_dataset(
    source: Any,
    tokenizer: Any,
    settings: DataSettings,
    *,
    split: str = "train",
    completion_field: str = "completion",
) -> BuiltDataset:
    """Load, render and tokenize every SFT record of ``source``; see the module docstring."""

    def step(record):
        text = render_completion(
            record, tokenizer, use_chat_template=settings.use_chat_template, completion_field=completion_field
        )
        return tokenize_completion(
            text,
            tokenizer,
            max_length=settings.max_length,
            max_prompt_length=settings.max_prompt_length,
            add_eos=settings.add_eos,
        )

    return _build(source, settings, split, step)


def _build(source: Any, settings: DataSettings, split: str, step: Callable[[Any], Example]) -> BuiltDataset:
    name = str(source) if isinstance(source, (str, os.PathLike)) else "dataset"
    records = load_records(source, split=split)
    examples: list[Example] = []
    dropped: Counter[str] = Counter()
    for record in records:
        try:
            examples.append(step(record))
        except SkipExample as e:
            dropped[e.reason] += 1
    if not examples:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items()))
        raise DataError(f"{name}: all {len(records)} examples were dropped ({reasons})")
    return BuiltDataset(examples, dropped, name, settings)
