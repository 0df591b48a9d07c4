"""Rollout shaping: truncation masks, DAPO's soft overlong punishment (and parity with TRL's reward
function), dynamic sampling's filter and refill policy."""

from __future__ import annotations

import pytest
import torch

from preftune.rl import (
    fill_batch,
    group_rows,
    groups_with_signal,
    mask_truncated,
    soft_overlong_punishment,
    truncated_completions,
)

EOS, PAD = 2, 0


def test_truncated_completions_and_their_mask():
    ids = torch.tensor([[5, 6, EOS, PAD], [5, 6, 7, 8], [5, EOS, PAD, PAD], [5, 6, 7, PAD], [PAD] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]).bool()
    # Ends in EOS: rows 0 and 2. Row 1 hit the length limit; row 3 stopped at 3 tokens without EOS (a
    # stop string, or a shorter limit): also truncated. Row 4 has no token: nothing to mask.
    cut = truncated_completions(ids, mask, [EOS])
    assert cut.tolist() == [False, True, False, True, False]
    masked = mask_truncated(mask, cut)
    assert masked.sum(-1).tolist() == [3, 0, 2, 0, 0]
    # Several EOS ids (chat models end on <|im_end|> or <|endoftext|>) and TRL's pad-as-end rule.
    assert truncated_completions(ids, mask, [EOS, 8]).tolist() == [False, False, False, True, False]
    assert truncated_completions(ids, mask, [EOS], pad_token_id=7).tolist() == [False, True, False, False, False]


def test_soft_overlong_punishment_by_hand():
    # L = 10, C = 4: no penalty up to 6 tokens, then (6 − n)/4: 7 → −0.25, 8 → −0.5, 10 → −1; 11 → −1.
    got = soft_overlong_punishment(torch.tensor([1, 6, 7, 8, 10, 11]), 10, 4)
    torch.testing.assert_close(got, torch.tensor([0, 0, -0.25, -0.5, -1.0, -1.0]))
    # C = 0: a hard cliff past L.
    torch.testing.assert_close(soft_overlong_punishment(torch.tensor([10, 11]), 10, 0), torch.tensor([0.0, -1.0]))
    with pytest.raises(ValueError, match="soft_punish_cache"):
        soft_overlong_punishment(torch.tensor([1]), 10, 11)


def test_soft_overlong_punishment_matches_trl():
    rewards = pytest.importorskip("trl.rewards")
    lengths = list(range(0, 25))
    for cache in (0, 1, 5, 20):
        theirs = rewards.get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=cache)(
            completion_ids=[[1] * n for n in lengths])
        ours = soft_overlong_punishment(torch.tensor(lengths), 20, cache)
        torch.testing.assert_close(ours, torch.tensor(theirs, dtype=ours.dtype), rtol=0, atol=1e-7)


def test_dynamic_sampling_filter_and_refill():
    # Groups of 3: all-correct, mixed, all-wrong, mixed → keep groups 1 and 3.
    r = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0])
    keep = groups_with_signal(r, 3)
    assert keep.tolist() == [False, True, False, True]
    # Target 3 groups: only 2 kept so far → generate another round (None).
    assert fill_batch(keep, 3) is None
    # A second round of 4 groups with verdicts [T, F, T, T]: the first 3 kept of all 8 are 1, 3, 4.
    both = torch.cat([keep, torch.tensor([True, False, True, True])])
    assert fill_batch(both, 3).tolist() == [1, 3, 4]
    # Budget spent: train on what there is.
    assert fill_batch(keep, 3, final=True).tolist() == [1, 3]
    assert fill_batch(torch.zeros(4, dtype=torch.bool), 3, final=True).numel() == 0
    assert group_rows(torch.tensor([1, 3]), 3).tolist() == [3, 4, 5, 9, 10, 11]
