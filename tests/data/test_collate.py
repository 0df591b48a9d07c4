"""collate_preferences / collate_completions: layout, right padding and masks, checked by hand."""

import pytest
import torch

from preftune.data.collate import (
    CompletionBatch,
    PreferenceBatch,
    collate_completions,
    collate_preferences,
    collate_rankings,
    collate_unpaired,
)
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    TokenizedRanking,
    TokenizedUnpaired,
)

PAD = 0
EXAMPLES = [
    TokenizedPreference((1, 2), (3,), (4, 5, 6), "d[0]"),
    TokenizedPreference((7,), (8, 9), (10,), "d[1]"),
]


def test_preference_batch_layout_padding_and_masks():
    batch = collate_preferences(EXAMPLES, [10, 11], pad_token_id=PAD)
    assert isinstance(batch, PreferenceBatch) and batch.num_pairs == 2
    # rows: chosen 0, chosen 1, rejected 0, rejected 1; longest is 2 + 3 = 5.
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 0, 0],
        [7, 8, 9, 0, 0],
        [1, 2, 4, 5, 6],
        [7, 10, 0, 0, 0],
    ]
    assert batch.attention_mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
    ]
    F, T = False, True
    assert batch.loss_mask.tolist() == [
        [F, F, T, F, F],
        [F, T, T, F, F],
        [F, F, T, T, T],
        [F, T, F, F, F],
    ]
    assert batch.index.tolist() == [10, 11]
    assert (batch.input_ids.dtype, batch.attention_mask.dtype, batch.loss_mask.dtype, batch.index.dtype) == (
        torch.long,
        torch.long,
        torch.bool,
        torch.long,
    )


def test_pad_to_multiple_of_and_pad_id():
    batch = collate_preferences(EXAMPLES[:1], [0], pad_token_id=99, pad_to_multiple_of=4)
    assert batch.input_ids.tolist() == [[1, 2, 3, 99, 99, 99, 99, 99], [1, 2, 4, 5, 6, 99, 99, 99]]
    assert batch.attention_mask.sum(dim=1).tolist() == [3, 5]
    assert batch.loss_mask.sum(dim=1).tolist() == [1, 3]


def test_to_returns_a_batch_on_the_device():
    batch = collate_preferences(EXAMPLES, [0, 1], pad_token_id=PAD).to("cpu")
    assert isinstance(batch, PreferenceBatch) and batch.input_ids.device.type == "cpu"
    assert batch.num_pairs == 2


def test_completion_batch():
    examples = [TokenizedCompletion((1,), (2, 3), "d[0]"), TokenizedCompletion((4, 5, 6), (7,), "d[1]")]
    batch = collate_completions(examples, [3, 4], pad_token_id=PAD)
    assert isinstance(batch, CompletionBatch)
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.loss_mask.tolist() == [[False, True, True, False], [False, False, False, True]]
    assert batch.index.tolist() == [3, 4]
    assert batch.to("cpu").index.tolist() == [3, 4]


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 examples but 1 indices"):
        collate_preferences(EXAMPLES, [0], pad_token_id=PAD)
    with pytest.raises(ValueError, match="empty batch"):
        collate_completions([], [], pad_token_id=PAD)


@pytest.mark.parametrize(
    "collate, example, what",
    [
        (collate_preferences, TokenizedPreference((1, 2), (3,), (), "f.jsonl:4"), "the rejected has no tokens"),
        (collate_completions, TokenizedCompletion((1, 2), (), "f.jsonl:4"), "the completion has no tokens"),
        (collate_unpaired, TokenizedUnpaired((1,), (), True, "f.jsonl:4", (5,)), "the completion has no tokens"),
        (collate_rankings, TokenizedRanking((1,), ((3,), ()), "f.jsonl:4"), "the completion of rank 2 has no tokens"),
    ],
)
def test_a_row_without_a_supervised_token_never_reaches_a_loss(collate, example, what):
    # Built datasets never hold one (see test_bad_input_matrix.py); collate is the last guard before a loss.
    with pytest.raises(ValueError) as err:
        collate([example], [0], pad_token_id=PAD)
    assert str(err.value).startswith(f"f.jsonl:4: {what}, so its row would have no supervised token")


def test_rows_concat_pads_to_the_longest_and_keeps_each_rows_identity():
    from preftune.data.collate import Rows

    kto = collate_unpaired([TokenizedUnpaired((1, 2), (3,), True, "d[0]", kl_completion_ids=(4, 5, 6))], [7],
                           pad_token_id=PAD)
    rows = Rows.concat([kto.main, kto.kl])
    assert rows.input_ids.tolist() == [[1, 2, 3, 0, 0], [1, 2, 4, 5, 6]]
    assert rows.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert rows.loss_mask.tolist() == [[False, False, True, False, False], [False, False, True, True, True]]
    assert (rows.example.tolist(), rows.position.tolist(), rows.column.tolist()) == ([7, 7], [0, 0], [0, 1])
    assert Rows.concat([kto.main]) is kto.main
