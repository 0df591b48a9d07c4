"""stages/offline.py: the batch builder and the held-out evaluation every offline stage shares."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from preftune.data.dataset import BuiltDataset
from preftune.stages.lifecycle import Run
from preftune.stages.offline import evaluate, make_batches
from preftune.train.distributed import DistInfo


class Batch:
    def __init__(self, values: list[float]) -> None:
        self.values = torch.tensor(values)

    def to(self, device: torch.device) -> Batch:
        return self


def run_with(eval_batch_size: int) -> Run:
    cfg = SimpleNamespace(per_device_eval_batch_size=eval_batch_size, bf16=False)
    return Run(cfg=cfg, info=DistInfo(0, 1, 0, torch.device("cpu")), output_dir=None)


class Item:
    """An example of a prompt of 2 tokens and a completion of ``length``, carrying ``value``."""

    def __init__(self, length: int, value: float) -> None:
        self.length, self.value = length, value

    def num_tokens(self) -> int:
        return 2 + self.length


def examples(values: list[float]) -> BuiltDataset:
    return BuiltDataset([Item(i + 1, v) for i, v in enumerate(values)], Counter(), "test")


def collate(exs, indices, pad_token_id):
    return Batch([ex.value for ex in exs])


def test_make_batches_collates_the_indexed_examples_and_counts_their_tokens():
    get_batch = make_batches(collate, examples([5.0, 7.0, 9.0]), 0, torch.device("cpu"))
    batch, tokens = get_batch([2, 0])
    assert batch.values.tolist() == [9.0, 5.0]
    assert tokens == (2 + 3) + (2 + 1)      # prompt + completion of examples 2 and 0
    assert make_batches(collate, None, 0, torch.device("cpu")) is None   # no held-out data


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_evaluate_is_the_exact_mean_over_every_example_whatever_the_batch_size(batch_size):
    values = [1.0, 2.0, 4.0, 8.0, 16.0]
    model = nn.Linear(1, 1)
    seen_training = []

    def sums(batch: Batch) -> dict[str, torch.Tensor]:
        seen_training.append(model.training)
        return {"loss": batch.values.sum(), "sq": (batch.values ** 2).sum(),
                "count": torch.tensor(float(len(batch.values)))}

    data = examples(values)
    metrics = evaluate(run_with(batch_size), model, data, make_batches(collate, data, 0, torch.device("cpu")), sums,
                       ("loss", "sq", "count"))
    assert metrics == pytest.approx({"loss": 31 / 5, "sq": 341 / 5})      # hand sums: 1+2+4+8+16, 1+4+16+64+256
    assert seen_training and not any(seen_training) and model.training    # eval mode inside, restored after


def test_evaluate_on_an_empty_shard_contributes_zeros_for_the_keys():
    data = examples([])
    metrics = evaluate(run_with(2), nn.Linear(1, 1), data, make_batches(collate, data, 0, torch.device("cpu")),
                       lambda batch: {}, ("loss", "count"))
    assert metrics == {}     # a count of 0: the metric is left out, not divided by zero
