"""Shared fixtures: the in-process BPE tokenizer, and a character tokenizer whose ids are hand-computable."""

from __future__ import annotations

import pytest

from preftune.testing import tiny_tokenizer


class CharTokenizer:
    """One token per character (id = code point), so expected ids can be written down by hand.

    '<s>' is BOS (id 1) and '</s>' is EOS (id 2), recognised anywhere in the text like special
    tokens of a real tokenizer; add_special_tokens=True prepends BOS when the tokenizer has one.
    """

    eos_token = "</s>"
    eos_token_id = 2
    chat_template = None

    def __init__(self, bos: bool = True) -> None:
        self.bos_token = "<s>" if bos else None
        self.bos_token_id = 1 if bos else None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("<s>", i):
                ids.append(1)
                i += 3
            elif text.startswith("</s>", i):
                ids.append(2)
                i += 4
            else:
                ids.append(ord(text[i]))
                i += 1
        if add_special_tokens and self.bos_token:
            ids.insert(0, 1)
        return {"input_ids": ids}


@pytest.fixture(scope="session")
def chat_tok():
    return tiny_tokenizer(chat_template=True)


@pytest.fixture(scope="session")
def plain_tok():
    return tiny_tokenizer(chat_template=False)


@pytest.fixture
def char_tok():
    return CharTokenizer(bos=True)


@pytest.fixture
def char_tok_nobos():
    return CharTokenizer(bos=False)
