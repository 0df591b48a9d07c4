"""`preftune demo-grpo`: its settings and the standard error of the rise (fast), and a shortened run on the
real SmolLM2-135M-Instruct that raises held-out exact-match accuracy by more than 2 standard errors (slow)."""

import math

import pytest

from preftune.demo_grpo import TASK, Rise, demo_config, run_demo_grpo


def test_the_rise_is_measured_in_standard_errors_of_the_difference():
    rise = Rise(before=0.2, after=0.4, n=100)
    se = math.sqrt((0.2 * 0.8 + 0.4 * 0.6) / 100)          # = 0.0632...
    assert rise.standard_error == pytest.approx(se)
    assert rise.z == pytest.approx(0.2 / se) and rise.significant
    assert not Rise(0.2, 0.3, 100).significant            # 0.1 / 0.0608 = 1.6 standard errors
    assert Rise(0.0, 0.0, 50).z == 0.0 and Rise(0.0, 1.0, 50).z == math.inf


def test_the_demo_settings_build_and_hold_out_disjoint_problems(tmp_path):
    cfg = demo_config([f"output_dir={tmp_path}"])
    assert cfg.model_name_or_path == "smollm2" and cfg.reward_funcs == ["exact_answer"] and cfg.eval_greedy
    assert cfg.train_file == str(tmp_path / "data" / "train.jsonl")
    assert cfg.per_device_train_batch_size % cfg.num_generations == 0
    # Operands 0..max: (max + 1)² distinct problems, enough for both splits.
    assert TASK["n_train"] + TASK["n_eval"] <= (TASK["max_operand"] + 1) ** 2


@pytest.mark.slow
def test_a_shortened_demo_raises_held_out_accuracy_by_more_than_two_standard_errors(smollm2_dir, tmp_path):
    summary = run_demo_grpo([f"model_name_or_path={smollm2_dir}", f"output_dir={tmp_path}", "max_steps=16",
                             "logging_steps=1"], task={"n_eval": 60})
    assert summary["held_out"] == 60
    assert summary["accuracy_after"] > summary["accuracy_before"]
    assert summary["z"] > 2, summary
