"""completion_sequence: concatenation and the loss mask."""

import pytest

from preftune.data.mask import completion_sequence


def test_mask_marks_exactly_the_completion_tokens():
    ids, mask = completion_sequence((5, 6, 7), [8, 9])
    assert ids == [5, 6, 7, 8, 9]
    assert mask == [False, False, False, True, True]


def test_single_token_prompt_and_completion():
    assert completion_sequence([1], [2]) == ([1, 2], [False, True])


@pytest.mark.parametrize("prompt, completion", [([], [1]), ([1], []), ((), ())])
def test_empty_parts_are_rejected(prompt, completion):
    with pytest.raises(ValueError):
        completion_sequence(prompt, completion)
