import pytest

from preftune.train.optim import lr_at
from preftune.train.sampler import StepSampler, total_steps


def test_two_ranks_with_half_accumulation_cover_the_same_micro_batches():
    one = StepSampler(40, per_device_batch_size=2, accumulation=4, world_size=1, rank=0, seed=3)
    r0 = StepSampler(40, per_device_batch_size=2, accumulation=2, world_size=2, rank=0, seed=3)
    r1 = StepSampler(40, per_device_batch_size=2, accumulation=2, world_size=2, rank=1, seed=3)
    for step in range(12):  # crosses epoch boundaries (5 steps per epoch)
        single = sorted(tuple(b) for b in one.micro_batches(step))
        split = sorted(tuple(b) for b in r0.micro_batches(step) + r1.micro_batches(step))
        assert single == split


def test_each_epoch_is_a_permutation_and_epochs_differ():
    s = StepSampler(12, per_device_batch_size=3, accumulation=1, seed=0)
    assert s.steps_per_epoch == 4
    epoch0 = [i for step in range(4) for b in s.micro_batches(step) for i in b]
    epoch1 = [i for step in range(4, 8) for b in s.micro_batches(step) for i in b]
    assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1
    assert StepSampler(12, 3, 1, seed=0).micro_batches(5) == s.micro_batches(5)  # a function of (seed, step)


def test_partial_global_batch_is_reported_and_too_small_data_is_an_error():
    assert "2 examples left out" in StepSampler(10, 4, 1).describe()
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepSampler(3, 2, 2)


def test_total_steps():
    assert total_steps(10, 2.5, -1) == 25
    assert total_steps(10, 2.5, 7) == 7


def test_linear_warmup_then_decay():
    # peak 1, warm-up 2, total 6: steps 0,1 → 0.5, 1.0; then (6 − s)/4 for s = 2..5 → 1, .75, .5, .25
    got = [lr_at(s, peak=1.0, warmup=2, total=6, kind="linear") for s in range(6)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert lr_at(4, peak=1.0, warmup=2, total=6, kind="constant") == 1.0
