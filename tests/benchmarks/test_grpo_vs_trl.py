"""benchmarks/grpo_vs_trl.py, its parts that do not time anything: both frameworks' settings say the same
thing, the equivalence check passes on the tiny model (TRL 1.16's own GRPO loss code and preftune's compute
the same first-step loss and gradients) and fails when the two sides are given different losses, the task
rows, and the report table."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from tests.benchmarks._load import load_benchmark  # noqa: E402

bench = load_benchmark("grpo_vs_trl")
from vs_trl import workload  # noqa: E402


@pytest.fixture
def settings(tmp_path):
    model_dir = workload.prepare_model("tiny", tmp_path, max_length=64)
    return bench.Settings(model="tiny", model_dir=str(model_dir), prompts=2, generations=4, max_completion_length=8,
                          steps=2, lr=1e-5, max_grad_norm=1.0, threads=torch.get_num_threads(), seed=0)


def test_both_configs_say_the_same_thing(settings, tmp_path):
    trl_cfg = bench.trl_config(settings, str(tmp_path / "trl"))
    ours = bench.preftune_config(settings, str(tmp_path / "ours"))
    for theirs_key, our_key in [("per_device_train_batch_size", "per_device_train_batch_size"),
                                ("num_generations", "num_generations"),
                                ("max_completion_length", "max_completion_length"), ("max_steps", "max_steps"),
                                ("learning_rate", "learning_rate"), ("lr_scheduler_type", "lr_scheduler_type"),
                                ("warmup_steps", "warmup_steps"), ("weight_decay", "weight_decay"),
                                ("max_grad_norm", "max_grad_norm"), ("beta", "beta"), ("loss_type", "loss_type"),
                                ("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                                ("gradient_checkpointing", "gradient_checkpointing"), ("optim", "optim"),
                                ("disable_dropout", "disable_dropout"), ("epsilon", "epsilon"),
                                ("scale_rewards", "scale_rewards"), ("num_iterations", "num_iterations")]:
        a, b = getattr(trl_cfg, theirs_key), getattr(ours, our_key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            assert float(a) == float(b), (theirs_key, a, b)
        else:
            assert str(getattr(a, "value", a)).lower() == str(getattr(b, "value", b)).lower(), (theirs_key, a, b)
    assert trl_cfg.gradient_accumulation_steps == ours.gradient_accumulation_steps == 1
    assert not trl_cfg.use_vllm and not trl_cfg.bf16 and not ours.bf16


def test_task_rows_are_distinct_and_carry_their_answer():
    rows = bench.task_rows(12, seed=0)
    assert rows == bench.task_rows(12, seed=0) and len({str(r["prompt"]) for r in rows}) == 12
    for row in rows:
        a, b = (int(x) for x in row["prompt"][-1]["content"].removeprefix("What is ").rstrip("?").split(" + "))
        assert row["answer"] == str(a + b)


def test_the_equivalence_check_passes_on_the_same_loss(settings):
    result = bench.equivalence_check(settings, bench.task_rows(4, 0), log=lambda m: None)
    assert result.ok, result.lines
    first = result.details["first_step"]
    assert first["loss_abs_diff"] <= 1e-5 and first["grad_max_abs_diff"] > 0 or first["grad_max_rel_diff"] <= 1e-3


def test_the_equivalence_check_fails_when_the_losses_differ(settings, monkeypatch):
    """preftune's side given advantages × 2 (a scaling bug) while TRL's gets them as they are: it must fail."""
    import preftune.rl

    original = preftune.rl.grpo_loss

    def doubled(logprobs, advantages, *args, **kwargs):
        return original(logprobs, 2 * advantages, *args, **kwargs)

    monkeypatch.setattr(preftune.rl, "grpo_loss", doubled)
    result = bench.equivalence_check(settings, bench.task_rows(4, 0), log=lambda m: None)
    assert not result.ok and "FAIL" in result.lines[-1]


def test_the_report_puts_both_frameworks_side_by_side(settings):
    run = {"tokens_per_s": 100.0, "generation_share": 0.5, "generated_tokens_per_s": 40.0, "step_s": 2.0,
           "mean_completion_length": 7.5, "peak_rss_mib": 900.0}
    faster = {**run, "tokens_per_s": 150.0, "step_s": 1.0}
    text, table = bench.summarise(settings, {"trl": [run], "preftune": [faster]}, None)
    assert "| tokens/s (training phase) | 100.0 | 150.0 | 1.50× |" in text
    assert table["step_s"]["ratio"] == 0.5
    assert dataclasses.asdict(settings)["generations"] == 4
