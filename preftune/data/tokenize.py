"""Step 3: rendered strings → token ids, with EOS handling and truncation.

The prompt and each completion are tokenized *separately* and later concatenated. Tokenizing
``prompt + completion`` in one go could merge tokens across the boundary, so the prompt's ids
would not be a prefix of the full sequence and the loss mask would be off by a token; separate
tokenization makes ``full[:len(prompt_ids)] == prompt_ids`` true by construction.

Special tokens: the prompt is encoded with ``add_special_tokens=True`` (so a BOS-using model gets
its BOS) unless the rendered text already starts with ``bos_token`` (chat templates often write
it themselves; a double BOS hurts quality). Completions never get special tokens, except that
EOS is appended once when ``add_eos`` is set and the completion does not already end with it.

Truncation, in this order:

1. The prompt is trimmed from the LEFT to ``max_prompt_length`` tokens: the end of the prompt,
   right before the answer, matters most. (This can drop a leading BOS or system message; set the
   limits so that it is rare, and check the builder's summary.)
2. Each completion is trimmed from the RIGHT to ``max_completion_length`` tokens.
3. ``truncation_mode="keep_end"`` only: the prompt is trimmed from the LEFT so that it and the
   example's longest completion fit ``max_length`` (one prompt token is always kept: every
   completion keeps its prompt, so chosen and rejected share one cut, where TRL cuts each sequence
   on its own).
4. Each completion is trimmed from the RIGHT so that ``len(prompt) + len(completion) <=
   max_length`` (``keep_start``, TRL's default: a prompt that alone fills ``max_length`` leaves no
   completion, and the example is dropped and counted, as TRL drops it). A completion cut this way
   loses its EOS, which is right: the model must not learn to stop where the text was merely cut.

Every cut is counted in ``notes`` (when given), which the dataset builders report in their
summary: a prompt cut from the left, a completion cut from the right. A completion left with no
tokens raises ``SkipExample("completion fully truncated")``; a pair whose chosen and rejected
ids are identical (before or after truncation) carries no preference signal and raises
``SkipExample("chosen and rejected are identical")``. ``None`` means no limit.
A completion whose non-empty text encodes to zero tokens (a tokenizer that drops whitespace, say)
is a DataError naming the field: appending EOS to nothing would train "stop at once" on an answer
the data never gave. (An empty text is accepted here: render never produces one from data, and the
reward scorer passes one on purpose to score a bare EOS.)

KTO's unpaired examples follow the SFT rules (one prompt, one completion; the label is carried
along). A ranked list fits every completion like a pair's; two completions with identical ids
cannot be ordered by the model's likelihood, so the list raises
``SkipExample("identical completions in a ranking")``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from preftune.data.example import Example
from preftune.data.render.completion import CompletionText
from preftune.data.render.preference import PreferenceText
from preftune.data.render.ranking import RankingText
from preftune.data.render.unpaired import UnpairedText
from preftune.errors import DataError, SkipExample

if TYPE_CHECKING:
    from typing_extensions import Required, Unpack

__all__ = [
    "TokenizedCompletion",
    "TokenizedPreference",
    "TokenizedRanking",
    "TokenizedUnpaired",
    "tokenize_completion",
    "tokenize_preference",
    "tokenize_ranking",
    "tokenize_unpaired",
]

FULLY_TRUNCATED = "completion fully truncated"
IDENTICAL = "chosen and rejected are identical"
IDENTICAL_RANKED = "identical completions in a ranking"
PROMPT_CUT = "prompts cut from the left"
COMPLETION_CUT = "completions cut from the right"


@dataclass(frozen=True)
class TokenizedPreference(Example):
    """Token ids of a pair; ``chosen_ids``/``rejected_ids`` hold the completion only."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    origin: str

    @property
    def completion_columns(self) -> tuple[tuple[int, ...], ...]:
        return self.chosen_ids, self.rejected_ids

    def fingerprint_parts(self) -> list[Any]:
        return ["P", self.prompt_ids, self.chosen_ids, self.rejected_ids]


@dataclass(frozen=True)
class TokenizedCompletion(Example):
    """Token ids of an SFT example; ``completion_ids`` holds the completion only."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    origin: str

    @property
    def completion_columns(self) -> tuple[tuple[int, ...], ...]:
        return (self.completion_ids,)

    def fingerprint_parts(self) -> list[Any]:
        return ["C", self.prompt_ids, self.completion_ids]


@dataclass(frozen=True)
class TokenizedUnpaired(Example):
    """Token ids of a KTO example, its label, and the completion of its KL partner.

    ``kl_completion_ids`` is another example's completion, to be scored after *this* prompt for
    KTO's KL reference point; it stays empty until ``assign_kl_partners`` fills it in.
    """

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    label: bool
    origin: str
    kl_completion_ids: tuple[int, ...] = ()

    @property
    def completion_columns(self) -> tuple[tuple[int, ...], ...]:
        return self.completion_ids, self.kl_completion_ids  # the partner's column exists before it is assigned

    def fingerprint_parts(self) -> list[Any]:
        # The partners are hashed too: they decide which KL rows the reference scored.
        return ["U", self.prompt_ids, self.completion_ids, self.label, self.kl_completion_ids]

    @property
    def desirable(self) -> bool:
        return self.label


@dataclass(frozen=True)
class TokenizedRanking(Example):
    """Token ids of a ranked list; ``completion_ids[0]`` is the best completion, the last the worst."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[tuple[int, ...], ...]
    origin: str

    @property
    def completion_columns(self) -> tuple[tuple[int, ...], ...]:
        return self.completion_ids

    def fingerprint_parts(self) -> list[Any]:
        return ["R", self.prompt_ids, list(self.completion_ids)]


class Limits(TypedDict, total=False):
    """The keyword arguments every ``tokenize_*`` takes (``max_length`` and ``max_prompt_length`` required)."""

    max_length: Required[int | None]
    max_prompt_length: Required[int | None]
    add_eos: bool                          # default True
    notes: Counter[str] | None             # cuts are counted here (default None: not counted)
    max_completion_length: int | None      # default None
    truncation_mode: str                   # keep_start (default) or keep_end


def tokenize_preference(text: PreferenceText, tokenizer: Any, **limits: Unpack[Limits]) -> TokenizedPreference:
    """Tokenize and truncate a rendered pair (rules in the module docstring)."""
    prompt, (chosen, rejected) = _tokenize(text.prompt, {"field 'chosen'": text.chosen,
                                                         "field 'rejected'": text.rejected},
                                           tokenizer, text.origin, **limits)
    if chosen == rejected:
        raise SkipExample(IDENTICAL, text.origin)
    return TokenizedPreference(prompt, chosen, rejected, text.origin)


def tokenize_completion(text: CompletionText, tokenizer: Any, **limits: Unpack[Limits]) -> TokenizedCompletion:
    """Tokenize and truncate a rendered SFT example (rules in the module docstring)."""
    prompt, (completion,) = _tokenize(text.prompt, {f"field '{text.field}'": text.completion}, tokenizer,
                                      text.origin, **limits)
    return TokenizedCompletion(prompt, completion, text.origin)


def tokenize_unpaired(text: UnpairedText, tokenizer: Any, **limits: Unpack[Limits]) -> TokenizedUnpaired:
    """Tokenize and truncate a rendered KTO example like an SFT example; no KL partner yet."""
    prompt, (completion,) = _tokenize(text.prompt, {"field 'completion'": text.completion}, tokenizer,
                                      text.origin, **limits)
    return TokenizedUnpaired(prompt, completion, text.label, text.origin)


def tokenize_ranking(text: RankingText, tokenizer: Any, **limits: Unpack[Limits]) -> TokenizedRanking:
    """Tokenize and truncate a rendered ranked list, every completion as in a pair (module docstring)."""
    # Ranks, not 'completions[i]': scores may have reordered the list since it was read.
    ranked = {f"field 'completions' (rank {rank})": c for rank, c in enumerate(text.completions, start=1)}
    prompt, completions = _tokenize(text.prompt, ranked, tokenizer, text.origin, **limits)
    if len(set(completions)) < len(completions):
        raise SkipExample(IDENTICAL_RANKED, text.origin)
    return TokenizedRanking(prompt, tuple(completions), text.origin)


def _tokenize(
    prompt_text: str,
    completions: dict[str, str],
    tokenizer: Any,
    origin: str,
    *,
    max_length: int | None,
    max_prompt_length: int | None,
    add_eos: bool = True,
    notes: Counter[str] | None = None,
    max_completion_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Steps 1-4 of the module docstring for one prompt and its completions (``where`` → text, in order)."""
    _check_limits(max_length, max_prompt_length)
    prompt = encode_prompt(prompt_text, tokenizer, max_prompt_length, origin, notes)
    ids = [_completion_ids(text, tokenizer, add_eos, origin, where) for where, text in completions.items()]
    prompt, fitted = _fit_all(prompt, ids, max_length, max_completion_length, truncation_mode, origin, notes)
    return tuple(prompt), [tuple(c) for c in fitted]


def _check_limits(max_length: int | None, max_prompt_length: int | None) -> None:
    if max_length is not None and max_length < 2:
        raise ValueError(
            f"max_length must be >= 2 or None (one prompt and one completion token), got {max_length}"
        )
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1 or None, got {max_prompt_length}")
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length must be < max_length ({max_length}) so a completion token can fit, "
            f"got {max_prompt_length}"
        )


def encode_prompt(
    text: str, tokenizer: Any, max_prompt_length: int | None, origin: str, notes: Counter[str] | None = None
) -> list[int]:
    """A rendered prompt's ids: special tokens added unless it starts with BOS already, cut from the left to
    ``max_prompt_length`` (counted in ``notes``); a prompt of zero tokens is a DataError."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    if not ids:
        raise DataError(f"{origin}: field 'prompt' encodes to zero tokens")
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[-max_prompt_length:]
        if notes is not None:
            notes[PROMPT_CUT] += 1
    return ids


def _completion_ids(text: str, tokenizer: Any, add_eos: bool, origin: str, where: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if text and not ids:
        raise DataError(f"{origin}: {where} encodes to zero tokens (the tokenizer keeps none of its text)")
    if add_eos:
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise ValueError("add_eos is true but the tokenizer has no eos_token")
        if not ids or ids[-1] != eos_id:
            ids.append(eos_id)
    return ids


def _fit_all(
    prompt: list[int], completions: list[list[int]], max_length: int | None, max_completion_length: int | None,
    truncation_mode: str, origin: str, notes: Counter[str] | None
) -> tuple[list[int], list[list[int]]]:
    """Steps 2-4 of the module docstring for one prompt and its completions."""
    if truncation_mode not in ("keep_start", "keep_end"):
        raise ValueError(f"truncation_mode must be keep_start or keep_end, got {truncation_mode!r}")
    if max_completion_length is not None:
        cut = [c[:max_completion_length] for c in completions]
        if notes is not None:
            notes[COMPLETION_CUT] += sum(len(a) != len(b) for a, b in zip(cut, completions))
        completions = cut
    if truncation_mode == "keep_end" and max_length is not None:
        room = max(1, max_length - max(len(c) for c in completions))
        if len(prompt) > room:
            prompt = prompt[-room:]
            if notes is not None:
                notes[PROMPT_CUT] += 1
    return prompt, [_fit(prompt, c, max_length, origin, notes) for c in completions]


def _fit(
    prompt: list[int], completion: list[int], max_length: int | None, origin: str, notes: Counter[str] | None = None
) -> list[int]:
    if max_length is not None and len(completion) > max_length - len(prompt):
        completion = completion[: max(0, max_length - len(prompt))]
        if completion and notes is not None:
            notes[COMPLETION_CUT] += 1
    if not completion:
        raise SkipExample(FULLY_TRUNCATED, origin)
    return completion
