"""What every layout's tokenized example tells the rest of the pipeline about itself.

A layout (pairs, SFT completions, KTO's unpaired examples, ranked lists, RL prompts) owns its columns, its
token count and what of it is hashed into the dataset's fingerprint: its example class answers for them,
so the dataset and the stages never ask which layout an example is. A new layout's example subclasses
:class:`Example`; its builder and collate go into :data:`preftune.data.layouts.LAYOUTS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any


class Example(ABC):
    """A tokenized example: its prompt ids, and the completions scored after that prompt."""

    prompt_ids: tuple[int, ...]

    @property
    @abstractmethod
    def completion_columns(self) -> tuple[tuple[int, ...], ...]:
        """The completions scored after the prompt, one per column of a per-(example, column) table such as
        the cached reference log-probs (a pair: chosen, rejected)."""

    @abstractmethod
    def fingerprint_parts(self) -> list[Any]:
        """What the dataset's fingerprint hashes of this example (JSON-serialisable), led by a letter that
        names the layout, so that the same ids in two layouts hash differently."""

    @property
    def desirable(self) -> bool | None:
        """The label of an example judged on its own (KTO); None for layouts that carry none."""
        return None

    def num_tokens(self) -> int:
        """Non-padding tokens the policy runs over: every scored sequence repeats the prompt."""
        return sum(len(self.prompt_ids) + len(c) for c in self.completion_columns)


def num_tokens(examples: Iterable[Example]) -> int:
    """Non-padding tokens the policy runs over for these examples (host-side: no device sync)."""
    return sum(ex.num_tokens() for ex in examples)
