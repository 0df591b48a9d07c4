"""The non-finite guard of the shared loop: a poisoned step changes nothing; N in a row stop the run."""

import copy

import pytest
import torch
from torch import nn

from preftune.config import TrainingConfig
from preftune.train.distributed import DistInfo
from preftune.train.loop import IndexedBatches, LoopState, TrainingDiverged, train_loop
from preftune.train.metrics import MetricsLogger
from preftune.train.optim import build_optimizer
from preftune.train.sampler import StepSampler

ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def setup(tmp_path, poisoned: set[int], **overrides):
    """A linear regression trained by the real loop; steps in ``poisoned`` (1-based) produce a NaN loss."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    model = nn.Linear(4, 1)
    cfg = TrainingConfig(model_name_or_path="unused", output_dir=str(tmp_path), learning_rate=0.1,
                         per_device_train_batch_size=4, gradient_accumulation_steps=2, logging_steps=1,
                         progress_bar=False, report_to="none", **overrides)
    optimizer = build_optimizer(model, cfg)
    sampler = StepSampler(32, 4, 2, seed=0)
    calls = {"n": 0}

    def compute_loss(idx):
        calls["n"] += 1
        step = (calls["n"] - 1) // 2 + 1                     # two micro-batches per step
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        if step in poisoned:
            loss = loss * float("nan")
        return loss, {"loss": loss.detach() * len(idx), "count": torch.tensor(float(len(idx)))}

    def run(state, total):
        return train_loop(cfg=cfg, model=model, optimizer=optimizer,
                          source=IndexedBatches(sampler, lambda idx: (torch.tensor(idx), len(idx))),
                          compute_loss=compute_loss,
                          info=ONE, logger=MetricsLogger(tmp_path, "none", enabled=False), total_steps=total,
                          state=state)
    return model, optimizer, run


def test_a_non_finite_step_leaves_parameters_and_optimizer_state_bitwise_unchanged(tmp_path):
    model, optimizer, run = setup(tmp_path, poisoned={3})
    state = run(LoopState(), 2)
    params, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    state = run(state, 3)
    assert state.skipped_steps == 1 and state.consecutive_skips == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    for p, saved in zip(optimizer.state_dict()["state"].values(), opt_state["state"].values()):
        for k in saved:
            assert torch.equal(p[k], saved[k]), k
    state = run(state, 4)                                   # the next finite step trains again
    assert state.consecutive_skips == 0
    assert not torch.equal(model.weight, params["weight"])
    assert state.history[2]["skipped_steps"] == 1.0


def test_n_non_finite_steps_in_a_row_stop_the_run_naming_what_happened(tmp_path):
    _, _, run = setup(tmp_path, poisoned={2, 3, 4}, max_consecutive_skips=3)
    with pytest.raises(TrainingDiverged, match=r"stopped at step 4: 3 optimizer steps in a row .* no checkpoint"):
        run(LoopState(), 8)


def test_isolated_skips_do_not_stop_the_run(tmp_path):
    _, _, run = setup(tmp_path, poisoned={2, 4, 6}, max_consecutive_skips=2)
    state = run(LoopState(), 8)
    assert state.skipped_steps == 3 and state.step == 8


def test_zero_means_never_stop(tmp_path):
    _, _, run = setup(tmp_path, poisoned=set(range(1, 9)), max_consecutive_skips=0)
    assert run(LoopState(), 8).skipped_steps == 8
