"""GRPO end to end on a tiny random Llama with a programmatic reward (tests.stages.rl_rewards)."""

import math

import pytest
import torch

from preftune.config import GRPOConfig, load_config
from preftune.rl import LOSS_TYPES
from preftune.stages.grpo import advantages_of, run_grpo
from preftune.train.distributed import DistInfo
from tests.conftest import pre_trl

PROMPTS = [{"prompt": f"Review number {i}:", "answer": str(i % 10)} for i in range(96)]
E_COUNT = "reward_funcs=[tests.stages.rl_rewards:letter_e_count]"


def grpo_config(model_dir, out, *extra):
    return load_config(GRPOConfig, None, pre_trl([
        f"model_name_or_path={model_dir}", f"output_dir={out}", "max_completion_length=8", "max_prompt_length=16",
        "per_device_train_batch_size=16", "num_generations=4", "eval_size=32", "learning_rate=1e-2", "threads=1",
        "progress_bar=false", "report_to=none", "seed=0", E_COUNT, *extra], online=True))


def test_grpo_raises_held_out_reward(tiny_model_dir, tmp_path):
    result = run_grpo(grpo_config(tiny_model_dir, tmp_path, "max_steps=20"), train_data=PROMPTS)
    assert result.eval_after["reward"] > result.eval_before["reward"] + 0.5    # ~0.6 'e' per completion at first
    logged = result.history[-1]
    for key in ("loss", "reward", "reward_std", "rewards/letter_e_count", "frac_reward_zero_std", "entropy",
                "response_length", "completions/clipped_ratio", "clip_ratio/region", "grad_norm", "tokens_per_s",
                "generation_time_share", "tokens_seen"):
        assert math.isfinite(logged[key]), key


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_every_loss_type_trains_on_stale_samples_and_with_a_kl_term(tiny_model_dir, tmp_path, loss_type):
    """num_iterations=2: the second pass over a generation trains on samples of the previous weights
    (old log-probs, clipped ratio); beta > 0 loads π_ref and puts the KL in the loss."""
    extra = ["importance_sampling_level=sequence"] if loss_type == "luspo" else []
    result = run_grpo(grpo_config(tiny_model_dir, tmp_path, f"loss_type={loss_type}", "num_iterations=2",
                                  "beta=0.04", "max_steps=4", "eval_size=0", *extra), train_data=PROMPTS)
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    for h in result.history:
        assert math.isfinite(h["loss"]) and h["grad_norm"] > 0 and h["kl"] >= 0
    assert result.history[0]["kl"] == 0.0 and result.history[1]["kl"] > 0    # π_θ = π_ref before the first step


def test_truncated_completions_leave_the_loss(tiny_model_dir, tmp_path):
    """Every completion is cut at 3 tokens (none reaches EOS): masked, the step has no token to learn from."""
    masked = run_grpo(grpo_config(tiny_model_dir, tmp_path / "m", "max_completion_length=3", "max_steps=2",
                                  "eval_size=0", "mask_truncated_completions=true"), train_data=PROMPTS)
    kept = run_grpo(grpo_config(tiny_model_dir, tmp_path / "k", "max_completion_length=3", "max_steps=2",
                                "eval_size=0"), train_data=PROMPTS)
    assert all(h["completions/clipped_ratio"] == 1.0 for h in masked.history)
    assert all(h["grad_norm"] == 0.0 for h in masked.history)
    assert all(h["grad_norm"] > 0.0 for h in kept.history)


ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_advantages_follow_scale_rewards_and_the_multi_objective_rule(tiny_model_dir):
    """Two groups of 2; rewards (a, b) per completion with weights (1, 2), worked by hand."""
    table = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, float("nan")]])
    weights = torch.tensor([1.0, 2.0])
    base = ["model_name_or_path=m", "train_file=t", "reward_funcs=[a,b]", "num_generations=2",
            "per_device_train_batch_size=4"]
    cfg = load_config(GRPOConfig, None, base + ["scale_rewards=none"])
    adv, total, _ = advantages_of(cfg, table, weights, ONE)
    assert total.tolist() == [1.0, 0.0, 3.0, 0.0]                       # NaN counts as 0 when another scored
    assert adv.tolist() == [0.5, -0.5, 1.5, -1.5]
    cfg = load_config(GRPOConfig, None, base + ["scale_rewards=group"])
    adv, _, _ = advantages_of(cfg, table, weights, ONE)
    std1, std2 = math.sqrt(0.5), math.sqrt(4.5)                        # sample std (n − 1) of (1, 0) and (3, 0)
    assert adv.tolist() == pytest.approx([0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), 1.5 / (std2 + 1e-4),
                                          -1.5 / (std2 + 1e-4)])
    cfg = load_config(GRPOConfig, None, base + ["multi_objective_aggregation=normalize_then_sum"])
    adv, _, _ = advantages_of(cfg, table, weights, ONE)
    # reward a: both groups (1, 0) → ±0.5/(√0.5 + 1e-4); reward b: group 1 all 0 → 0, group 2 has one score → 0.
    a = 0.5 / (std1 + 1e-4)
    summed = torch.tensor([a, -a, a, -a])
    assert adv.tolist() == pytest.approx(((summed - summed.mean()) / (summed.std() + 1e-4)).tolist())
