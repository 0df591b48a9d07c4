import pytest

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
    # Fractional epochs round up to whole optimizer steps, as transformers' ceil(epochs × steps per epoch).
    assert total_steps(3, 2.5, -1) == 8 and total_steps(4, 0.3, -1) == 2 and total_steps(7, 1 / 7, -1) == 1


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from transformers import Trainer, TrainingArguments

    from preftune.testing import tiny_llama

    return Trainer(model=tiny_llama(64), args=TrainingArguments(str(tmp_path_factory.mktemp("t")), report_to="none"))


@pytest.mark.parametrize("examples", [48, 96, 51, 100, 7 * 24 + 5])
@pytest.mark.parametrize("batch, accumulation", [(1, 1), (4, 1), (2, 3), (3, 4)])
@pytest.mark.parametrize("epochs", [1, 3, 0.3, 2.5, 1 / 7, 0.99])
def test_run_length_is_the_trainers_on_the_examples_an_epoch_uses(trainer, examples, batch, accumulation, epochs):
    # transformers' Trainer.set_initial_training_values, given a DataLoader of the examples an epoch uses (preftune
    # leaves a final partial global batch out of each epoch; the Trainer would run it as a smaller step).
    from dataclasses import replace

    from torch.utils.data import DataLoader

    sampler = StepSampler(examples, batch, accumulation)
    used = sampler.steps_per_epoch * sampler.global_batch
    args = replace(trainer.args, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                   num_train_epochs=epochs)
    theirs = trainer.set_initial_training_values(args, DataLoader(range(used), batch_size=batch))
    num_update_steps_per_epoch, max_steps = theirs[1], theirs[-1]
    assert sampler.steps_per_epoch == num_update_steps_per_epoch
    assert total_steps(sampler.steps_per_epoch, epochs, -1) == max_steps
    args = replace(args, max_steps=11)
    assert total_steps(sampler.steps_per_epoch, epochs, 11) == trainer.set_initial_training_values(
        args, DataLoader(range(used), batch_size=batch))[-1]


def _padding(sampler, lengths, steps):
    """Padding tokens over ``steps`` steps: each micro-batch is padded to its longest example."""
    total = 0
    for step in range(steps):
        for b in sampler.micro_batches(step):
            total += sum(max(lengths[i] for i in b) - lengths[i] for i in b)
    return total


def test_length_grouping_cuts_padding_and_keeps_every_epoch_a_permutation():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(250)]
    plain = StepSampler(250, 4, 2, seed=1)
    grouped = StepSampler(250, 4, 2, seed=1, lengths=lengths)
    assert grouped.steps_per_epoch == 31                       # 248 used, 2 left out, as without grouping
    for epoch in range(2):
        steps = range(epoch * 31, (epoch + 1) * 31)
        seen = [i for s in steps for b in grouped.micro_batches(s) for i in b]
        assert len(seen) == len(set(seen)) == 248
    # Uniform lengths in [10, 500]: random micro-batches of 4 pad ≈ 40% of their tokens; windows of
    # 16 × 8 sorted examples leave a spread of ≈ 490 / 32 ≈ 15 tokens per micro-batch.
    assert _padding(grouped, lengths, 31) < 0.1 * _padding(plain, lengths, 31)
    assert grouped.micro_batches(40) == StepSampler(250, 4, 2, seed=1, lengths=lengths).micro_batches(40)
    assert grouped.micro_batches(0) != StepSampler(250, 4, 2, seed=2, lengths=lengths).micro_batches(0)


def test_length_grouping_splits_across_ranks_like_accumulation():
    lengths = [(7 * i) % 97 + 1 for i in range(96)]
    one = StepSampler(96, 2, 4, world_size=1, rank=0, seed=3, lengths=lengths)
    ranks = [StepSampler(96, 2, 2, world_size=2, rank=r, seed=3, lengths=lengths) for r in (0, 1)]
    for step in range(24):
        single = sorted(tuple(b) for b in one.micro_batches(step))
        split = sorted(tuple(b) for r in ranks for b in r.micro_batches(step))
        assert single == split


def test_lengths_must_match_the_examples():
    with pytest.raises(ValueError, match="got 3 lengths for 4 examples"):
        StepSampler(4, 2, 1, lengths=[1, 2, 3])
