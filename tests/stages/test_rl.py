"""Online RL end to end on a tiny random Llama with programmatic rewards (tests.stages.rl_rewards)."""

import math

import pytest
import torch

from preftune.config import RLConfig, load_config
from preftune.errors import ConfigError
from preftune.rewards import load_reward, score
from preftune.stages.rl import run_rl
from tests.conftest import pre_trl

PROMPTS = [{"prompt": f"Review number {i}:"} for i in range(96)]
E_COUNT = "reward=tests.stages.rl_rewards:letter_e_count"


def rl_config(model_dir, out, algorithm, *extra):
    return load_config(RLConfig, None, pre_trl([
        f"algorithm={algorithm}", f"model_name_or_path={model_dir}", f"output_dir={out}", "max_new_tokens=8",
        "max_prompt_length=16", "max_length=32", "per_device_train_batch_size=8", "eval_size=32",
        "learning_rate=1e-2", "threads=1", "progress_bar=false", "report_to=none", "seed=0", E_COUNT, *extra]))


@pytest.mark.parametrize("algorithm, extra", [
    ("ppo", ["per_device_train_batch_size=16"]),
    ("rloo", ["num_generations=4"]),
    ("reinforce", ["per_device_train_batch_size=16"]),
])
def test_rl_raises_held_out_reward_and_drifts_from_the_reference(tiny_model_dir, tmp_path, algorithm, extra):
    cfg = rl_config(tiny_model_dir, tmp_path, algorithm, "max_steps=30", "kl_coef=0.01", *extra)
    result = run_rl(cfg, train_data=PROMPTS)
    before, after = result.eval_before, result.eval_after
    assert before["kl"] == 0.0                         # π_θ = π_ref before the first update
    assert after["reward"] > before["reward"] + 1.0    # ~0.8 'e' per completion at the start
    assert after["kl"] > 1.0                           # with a tiny β nothing holds the policy back
    logged = result.history[-1]
    for key in ("reward", "reward_std", "kl", "entropy", "response_length", "policy_loss", "grad_norm",
                "generation_time_share", "tokens_per_s", "kl_coef"):
        assert math.isfinite(logged[key]), key
    if algorithm == "ppo":
        assert {"value_loss", "clipfrac", "approx_kl", "vf_clipfrac"} <= set(logged)


@pytest.mark.parametrize("algorithm, target, extra", [
    ("ppo", 2.0, ["per_device_train_batch_size=16"]),
    ("rloo", 1.0, ["per_device_train_batch_size=4", "num_generations=4"]),
])
def test_adaptive_kl_holds_the_policy_near_the_target(tiny_model_dir, tmp_path, algorithm, target, extra):
    cfg = rl_config(tiny_model_dir, tmp_path, algorithm, "max_steps=60", "kl_coef=1.0", "adaptive_kl=true",
                    f"kl_target={target}", "kl_horizon=32", *extra)
    result = run_rl(cfg, train_data=PROMPTS)
    history = result.history
    kl = [h["kl"] for h in history]
    # The policy does overshoot (β starts too low for this learning rate) — the controller has work to do.
    assert max(kl) > 2 * target
    # The controller's rule, step by step: β rises exactly when the measured KL exceeded the target.
    for now, nxt in zip(history, history[1:]):
        assert (nxt["kl_coef"] > now["kl_coef"]) == (now["kl"] > target)
    # ... and it pulls the policy back: the last 20 rollouts and the held-out KL sit under 2 × target.
    assert sum(kl[-20:]) / 20 < 2 * target
    assert result.eval_after["kl"] < 2 * target
    assert result.eval_after["reward"] > result.eval_before["reward"]


def test_ppo_resume_continues_exactly(tiny_model_dir, tmp_path):
    extra = ["per_device_train_batch_size=8", "max_steps=6", "save_steps=3", "adaptive_kl=true", "kl_horizon=32"]
    full = run_rl(rl_config(tiny_model_dir, tmp_path / "full", "ppo", *extra), train_data=PROMPTS)
    resumed = run_rl(rl_config(tiny_model_dir, tmp_path / "full", "ppo", *extra,
                               f"resume={tmp_path / 'full' / 'checkpoint-3'}"), train_data=PROMPTS)
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    for a, b in zip(full.history[3:], resumed.history, strict=True):
        for key in ("reward", "kl", "kl_coef", "policy_loss", "value_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert (full.final_dir / "value_head.pt").is_file()


def test_rl_config_errors_name_the_key():
    base = ["model_name_or_path=m", "train_file=p.jsonl", E_COUNT]
    with pytest.raises(ConfigError, match="rloo needs num_generations >= 2"):
        load_config(RLConfig, None, base + ["algorithm=rloo"])
    with pytest.raises(ConfigError, match="clip_range is set but only algorithm ppo uses it"):
        load_config(RLConfig, None, base + ["algorithm=reinforce", "clip_range=0.1"])
    with pytest.raises(ConfigError, match="kl_target is set but adaptive_kl is false"):
        load_config(RLConfig, None, base + ["kl_target=3"])
    with pytest.raises(ConfigError, match="num_mini_batches .* must divide"):
        load_config(RLConfig, None, base + ["num_mini_batches=3"])
    with pytest.raises(ConfigError, match="reward is required"):
        load_config(RLConfig, None, ["model_name_or_path=m", "train_file=p.jsonl"])


def test_reward_functions_load_and_are_checked(tmp_path):
    fn = load_reward("tests.stages.rl_rewards:letter_e_count")
    assert score(fn, ["p", "p"], ["eee", "x"]).tolist() == [3.0, 0.0]
    with pytest.raises(ConfigError, match="cannot import module"):
        load_reward("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="has no callable"):
        load_reward("tests.stages.rl_rewards:nope")
    with pytest.raises(ConfigError, match="not a folder, not a Hub id, and not of the form"):
        load_reward(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="non-finite score"):
        score(lambda p, c: [float("nan")] * len(c), ["p"], ["x"])
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        score(lambda p, c: [1.0], ["p", "p"], ["x", "y"])
    assert score(fn, ["p"], ["e"], torch.device("cpu")).dtype == torch.float32
