"""The learning-rate schedule and optimizer equal transformers' own, step by step."""

import math

import pytest
import torch
from torch import nn
from transformers import TrainingArguments, get_scheduler

from preftune.config import TrainingConfig
from preftune.config.optim import SCHEDULES
from preftune.config.schedule import warmup_steps
from preftune.testing import tiny_llama
from preftune.train.optim import build_optimizer, decays, lr_schedule

BASE = {"model_name_or_path": "unused", "learning_rate": 2e-3}
# Each schedule with the settings it needs (and some that change its shape).
KWARGS = {"cosine_with_restarts": {"num_cycles": 3}, "polynomial": {"lr_end": 1e-5, "power": 2.0},
          "inverse_sqrt": {"timescale": 7}, "cosine_with_min_lr": {"min_lr_rate": 0.1},
          "cosine_warmup_with_min_lr": {"min_lr": 1e-4}, "warmup_stable_decay": {"num_decay_steps": 9},
          "cosine": {"num_cycles": 0.4}}


def transformers_lrs(name: str, warmup: int, total: int, kwargs: dict) -> list[float]:
    """The lr of every optimizer step as the Trainer applies it: read before each step, scheduler stepped after."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE["learning_rate"])
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                              scheduler_specific_kwargs=kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 5, 0.25])
def test_every_schedule_equals_transformers_step_by_step(name, warmup):
    if name == "constant" and warmup:
        pytest.skip("constant has no warm-up (refused, see below)")
    total = 37
    cfg = TrainingConfig(**BASE, lr_scheduler_type=name, lr_scheduler_kwargs=KWARGS.get(name), warmup_steps=warmup)
    ours = lr_schedule(cfg, total)
    expected = transformers_lrs(name, warmup_steps(warmup, 0.0, total), total, KWARGS.get(name, {}))
    assert [ours(s) for s in range(total)] == pytest.approx(expected, rel=1e-12, abs=0)


def test_linear_and_cosine_by_hand():
    # peak 1, warm-up 2, total 6: the first step at lr 0 (as the Trainer), then (6 − s)/4.
    linear = lr_schedule(TrainingConfig(model_name_or_path="m", learning_rate=1.0, warmup_steps=2), 6)
    assert [linear(s) for s in range(6)] == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])
    cosine = lr_schedule(TrainingConfig(model_name_or_path="m", learning_rate=1.0, warmup_steps=2,
                                        lr_scheduler_type="cosine"), 6)
    # after warm-up: ½(1 + cos(π · (s − 2)/4)) for s = 2..5
    assert [cosine(s) for s in range(6)] == pytest.approx(
        [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])


@pytest.mark.parametrize("total", [1, 7, 25, 100, 1003])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.333])
def test_fractional_warmup_rounds_up_as_transformers(tmp_path, total, fraction):
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=fraction, report_to="none")
    assert warmup_steps(fraction, 0.0, total) == args.get_warmup_steps(total) == math.ceil(total * fraction)
    assert warmup_steps(0, fraction, total) == math.ceil(total * fraction)   # transformers 4's warmup_ratio
    assert warmup_steps(12, 0.0, total) == args.__class__(output_dir=str(tmp_path), warmup_steps=12,
                                                           report_to="none").get_warmup_steps(total)


def test_warmup_ratio_gives_transformers_steps_and_starts_at_zero():
    # 25 steps × 0.1 = 2.5 warm-up steps: transformers takes 3 (rounding would take 2), from lr 0.
    lr = lr_schedule(TrainingConfig(model_name_or_path="m", learning_rate=1.0, warmup_ratio=0.1), 25)
    assert [lr(s) for s in range(4)] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


def test_decay_groups_are_the_trainers():
    from transformers import Trainer

    model = tiny_llama(64)
    names = {n for n, _ in model.named_parameters()}
    expected = set(Trainer.get_decay_parameter_names(None, model))
    assert {n for n in names if decays(n)} == expected
    assert "model.norm.weight" not in expected and any("q_proj" in n for n in expected)
    optimizer = build_optimizer(model, TrainingConfig(model_name_or_path="m", weight_decay=0.1))
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    params = dict(model.named_parameters())
    assert by_decay[0.1] == {id(params[n]) for n in expected}
    assert by_decay[0.0] == {id(params[n]) for n in names - expected}


@pytest.mark.parametrize("optim, cls, extra", [
    ("adamw_torch", torch.optim.AdamW, {"fused": None}), ("adamw_torch_fused", torch.optim.AdamW, {"fused": True}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}), ("adagrad", torch.optim.Adagrad, {}),
    ("rmsprop", torch.optim.RMSprop, {"alpha": 0.95, "momentum": 0.0}),
])
def test_optim_names_build_transformers_optimizers(optim, cls, extra):
    args = {"sgd": "momentum=0.9,nesterov=true", "rmsprop": "alpha=0.95"}.get(optim)
    optimizer = build_optimizer(nn.Linear(3, 2), TrainingConfig(model_name_or_path="m", optim=optim, optim_args=args,
                                                                learning_rate=0.5))
    assert type(optimizer) is cls and optimizer.defaults["lr"] == 0.5
    for key, value in extra.items():
        assert optimizer.defaults[key] == value


def test_adafactor_is_transformers_with_an_explicit_lr():
    from transformers.optimization import Adafactor

    optimizer = build_optimizer(nn.Linear(3, 2), TrainingConfig(model_name_or_path="m", optim="adafactor"))
    assert type(optimizer) is Adafactor
    assert optimizer.defaults["relative_step"] is False and optimizer.defaults["scale_parameter"] is False


@pytest.mark.parametrize("settings, message", [
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "One of min_lr or min_lr_rate should be set"),
    ({"lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"num_cyles": 2}}, "num_cyles"),
    ({"lr_scheduler_type": "polynomial", "lr_scheduler_kwargs": {"lr_end": 1.0}}, "must be smaller than initial lr"),
    ({"lr_scheduler_type": "warmup_stable_decay"}, "num_decay_steps"),
    ({"lr_scheduler_type": "constant", "warmup_steps": 10}, "constant has no warm-up"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "reduce_lr_on_plateau is not supported: it lowers the lr"),
    ({"lr_scheduler_type": "greedy"}, "greedy is not supported"),
    ({"lr_scheduler_type": "cosin"}, "lr_scheduler_type must be one of linear, cosine"),
    ({"optim": "sgd", "optim_args": "beta=0.9"}, "sgd reads momentum"),
    ({"optim": "adamw_torch", "optim_args": "momentum=0.9"}, "takes no optim_args"),
    ({"optim": "sgd", "adam_beta2": 0.99}, "adam_beta2 is set but optim sgd does not read it"),
])
def test_schedule_and_optimizer_mistakes_are_config_errors(settings, message):
    from preftune.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TrainingConfig(model_name_or_path="m", **settings)
