"""A layout owns its columns, token count and fingerprint parts (data/example.py); the registry names them all."""

from collections import Counter
from dataclasses import dataclass
from typing import Any

from preftune.data.collate import collate_preferences
from preftune.data.dataset import BuiltDataset, DataSettings, build_preference_dataset
from preftune.data.example import Example, num_tokens
from preftune.data.layouts import LAYOUTS
from preftune.data.prompts import TokenizedPrompt
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    TokenizedRanking,
    TokenizedUnpaired,
)


def test_token_counts_repeat_the_prompt_for_every_scored_completion():
    # By hand: prompt length + completion length, summed over the completions the policy scores.
    assert num_tokens([TokenizedPreference((1, 2), (3, 4, 5), (6,), "o")]) == (2 + 3) + (2 + 1)
    assert num_tokens([TokenizedCompletion((1, 2), (3,), "o")]) == 2 + 1
    assert num_tokens([TokenizedUnpaired((1,), (2, 3), True, "o", (4,))]) == (1 + 2) + (1 + 1)  # with its KL partner
    assert num_tokens([TokenizedRanking((1, 2), ((3,), (4, 5), (6, 7, 8)), "o")]) == (2 + 1) + (2 + 2) + (2 + 3)
    assert num_tokens([TokenizedPrompt((1, 2, 3), "p", "o")]) == 3    # the completion is yet to be sampled
    assert num_tokens([TokenizedCompletion((1,), (2,), "o"), TokenizedPrompt((4,), "q", "o")]) == 2 + 1


def test_each_layout_names_its_columns():
    assert TokenizedPreference((1,), (2,), (3,), "o").completion_columns == ((2,), (3,))
    assert TokenizedUnpaired((1,), (2,), False, "o").completion_columns == ((2,), ())  # partner not yet assigned
    assert TokenizedUnpaired((1,), (2,), False, "o").desirable is False
    assert TokenizedCompletion((1,), (2,), "o").desirable is None


@dataclass(frozen=True)
class Triple(Example):
    """A layout the package does not have: one prompt, three completions."""

    prompt_ids: tuple[int, ...]
    completions: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    origin: str

    @property
    def completion_columns(self) -> tuple[tuple[int, ...], ...]:
        return self.completions

    def fingerprint_parts(self) -> list[Any]:
        return ["T", self.prompt_ids, list(self.completions)]


def test_a_new_layout_needs_no_change_to_the_dataset():
    examples = [Triple((1,), ((2,), (3, 4), (5,)), "o")]
    data = BuiltDataset(examples, Counter(), "t.jsonl", DataSettings())
    assert data.num_columns == 3 and num_tokens(examples) == 2 + 3 + 2 and data.label_counts is None
    other = BuiltDataset([Triple((1,), ((2,), (3,), (5,)), "o")], Counter(), "t.jsonl", DataSettings())
    assert data.fingerprint() != other.fingerprint()
    # The same ids in another layout hash differently (the layout's letter leads its parts).
    ranked = BuiltDataset([TokenizedRanking((1,), ((2,), (3, 4), (5,)), "o")], Counter(), "t.jsonl", DataSettings())
    assert data.fingerprint() != ranked.fingerprint()


def test_the_registry_holds_every_layout():
    assert set(LAYOUTS) == {"preference", "completion", "unpaired", "ranking", "prompt"}
    preference = LAYOUTS["preference"]
    assert preference.build is build_preference_dataset and preference.collate is collate_preferences
    assert LAYOUTS["prompt"].collate is None
