"""When to log, evaluate and save: the same decisions as transformers' DefaultFlowCallback, step by step."""

import math

import pytest
from transformers import TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback, TrainerControl, TrainerState

from preftune.config import TrainingConfig
from preftune.train.cadence import Cadence


def transformers_decisions(tmp_path, total: int, per_epoch: int, **settings) -> list[tuple[int, bool, bool, bool]]:
    """(step, log, evaluate, save) after each optimizer step, from the Trainer's own callback: on_step_end
    every step, on_epoch_end at each epoch's last step (and at the run's last step, where its loop ends)."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **settings)
    state = TrainerState(max_steps=total)
    state.compute_steps(args, total)
    flow = DefaultFlowCallback()
    out = []
    for step in range(1, total + 1):
        control = TrainerControl()
        state.global_step, state.epoch = step, step / per_epoch
        flow.on_step_end(args, state, control)
        if step % per_epoch == 0 or step == total:
            flow.on_epoch_end(args, state, control)
        out.append((step, control.should_log, control.should_evaluate, control.should_save))
    return out


CASES = [
    dict(logging_steps=3, eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=5),
    dict(logging_steps=0.25, eval_strategy="steps", eval_steps=0.3, save_strategy="steps", save_steps=0.5),
    dict(logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch"),
    dict(logging_steps=2, logging_first_step=True, eval_strategy="steps", eval_steps=3, eval_delay=7,
         save_strategy="no"),
    dict(logging_strategy="no", eval_strategy="epoch", eval_delay=2, save_strategy="steps", save_steps=100),
    dict(logging_steps=10, eval_strategy="steps", save_strategy="epoch"),   # eval_steps from logging_steps
]


@pytest.mark.parametrize("settings", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("total, per_epoch", [(23, 5), (12, 4), (7, 10)])
def test_evaluate_and_save_decisions_are_the_trainers(tmp_path, settings, total, per_epoch):
    cadence = Cadence.of(TrainingConfig(model_name_or_path="m", **settings), total, per_epoch)
    theirs = transformers_decisions(tmp_path, total, per_epoch, **settings)
    ours = [(s, cadence.log(s), cadence.evaluate(s), cadence.save(s)) for s in range(1, total + 1)]
    assert [(s, e, v) for s, _, e, v in ours] == [(s, e, v) for s, _, e, v in theirs]
    # Logging: the Trainer's steps, plus the last step (so a curve ends where training ended).
    for (s, log, _, _), (_, their_log, _, _) in zip(ours, theirs):
        assert log == (their_log or (s == total and settings.get("logging_strategy") != "no"))


def test_fractional_intervals_round_up_as_transformers():
    cadence = Cadence.of(TrainingConfig(model_name_or_path="m", logging_steps=0.1, save_steps=0.33), 25, 5)
    assert cadence.log_every == math.ceil(2.5) == 3 and cadence.save_every == math.ceil(25 * 0.33) == 9
