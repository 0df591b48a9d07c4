"""The rollout source: which generation and rows each micro-step trains on, and what a checkpoint
inside a generation carries. ``make_rollout`` here builds real Rollouts of marked rows, so each
micro-batch says where it came from."""

import pytest
import torch

from preftune.data.collate import Rows
from preftune.data.dataset import BuiltDataset
from preftune.data.prompts import TokenizedPrompt
from preftune.stages.rollout import Rollout, RolloutSource, Schedule
from preftune.train.distributed import DistInfo

ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def prompts(n):
    return BuiltDataset([TokenizedPrompt((i + 1,), f"p{i}", f"row {i}") for i in range(n)], dropped={}, source="mem")


def source(schedule, n=64, info=ONE, calls=None):
    calls = [] if calls is None else calls

    def make(generation, examples, slots):
        calls.append((generation, [ex.prompt_ids[0] - 1 for ex in examples], slots))
        n_rows = len(examples) * schedule.generations
        ids = torch.arange(n_rows)[:, None].repeat(1, 3) + 1000 * generation
        rows = Rows(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool), torch.arange(n_rows),
                    torch.arange(n_rows), torch.zeros(n_rows, dtype=torch.long))
        return Rollout(rows, torch.arange(n_rows) // schedule.generations,
                       {"advantages": torch.arange(n_rows, dtype=torch.float32)},
                       {"reward": torch.full((n_rows,), float(generation))})
    return RolloutSource(schedule, prompts(n), make, info, seed=0), calls


def seen(src, step):
    return [(int(b.rows.input_ids[0, 0]) // 1000, sorted(b.data["advantages"].long().tolist()))
            for b, _ in src.micro_batches(step)]


def test_one_generation_per_optimizer_step_when_on_policy():
    s = Schedule(prompts=4, generations=2, chunks=2, passes=1, accumulation=2)
    assert s.on_policy and s.cycle == 2
    src, calls = source(s)
    first = seen(src, 0)
    assert [g for g, _ in first] == [0, 0]
    assert sorted(first[0][1] + first[1][1]) == list(range(8))        # the two micro-batches split the rollout
    assert [g for g, _ in seen(src, 1)] == [1, 1] and len(calls) == 2
    assert src.steps_per_epoch == 16                                   # 64 prompts / 4 per generation


def test_passes_and_chunks_reuse_a_generation_over_several_steps_reshuffled():
    s = Schedule(prompts=4, generations=1, chunks=2, passes=2, accumulation=1)
    assert not s.on_policy
    src, calls = source(s)
    batches = [seen(src, step)[0] for step in range(4)]
    assert [g for g, _ in batches] == [0, 0, 0, 0] and len(calls) == 1
    first_pass, second_pass = batches[0][1] + batches[1][1], batches[2][1] + batches[3][1]
    assert sorted(first_pass) == sorted(second_pass) == [0, 1, 2, 3]
    assert seen(src, 4)[0][0] == 1 and src.steps_per_epoch == 64


def test_prompts_and_seeds_follow_the_global_batch_whatever_the_process_count():
    s1 = Schedule(prompts=8, generations=2, chunks=1, passes=1, accumulation=1)
    one, calls_one = source(s1)
    list(one.micro_batches(0))
    s2 = Schedule(prompts=4, generations=2, chunks=1, passes=1, accumulation=1)
    calls_two = []
    for rank in range(2):
        info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        src, _ = source(s2, info=info, calls=calls_two)
        list(src.micro_batches(0))
    (_, prompts_one, slots_one), = calls_one
    assert prompts_one == calls_two[0][1] + calls_two[1][1]
    assert slots_one == calls_two[0][2] + calls_two[1][2] == list(range(8))


def test_a_checkpoint_inside_a_generation_carries_the_rollout():
    s = Schedule(prompts=4, generations=2, chunks=4, passes=1, accumulation=1)
    src, calls = source(s)
    list(src.micro_batches(0))
    list(src.micro_batches(1))
    assert src.state_dict(2) is not None and src.state_dict(4) is None   # step 4 starts a new generation
    state = src.state_dict(2)
    resumed, calls_resumed = source(s)
    resumed.load_state_dict(state)
    for step in (2, 3):
        assert seen(resumed, step) == seen(src, step)
    assert not calls_resumed                                               # nothing sampled again
    fresh, _ = source(s)
    with pytest.raises(RuntimeError, match="the rollout of generation 0 is not in memory at step 2"):
        list(fresh.micro_batches(2))


def test_pairs_stay_together_when_shuffled():
    s = Schedule(prompts=8, generations=2, chunks=4, passes=1, accumulation=4, unit=2)
    src, _ = source(s)
    for batch, _ in src.micro_batches(0):
        rows = batch.data["advantages"].long().tolist()
        assert len(rows) == 4
        for first, second in zip(rows[0::2], rows[1::2]):      # each pair whole, in its order
            assert first % 2 == 0 and second == first + 1
