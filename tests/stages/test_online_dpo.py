"""Online DPO end to end on a tiny random Llama: pairs sampled from the current policy, ranked by the reward."""

import math

import pytest
import torch

from preftune.config import OnlineDPOConfig, load_config
from preftune.stages.online_dpo import chosen_first, run_online_dpo
from tests.conftest import pre_trl

PROMPTS = [{"prompt": f"Review number {i}:"} for i in range(96)]


def config(model_dir, out, *extra):
    return load_config(OnlineDPOConfig, None, pre_trl([
        f"model_name_or_path={model_dir}", f"output_dir={out}", "max_new_tokens=8", "max_prompt_length=16",
        "per_device_train_batch_size=16", "eval_size=32", "learning_rate=1e-2", "temperature=1", "threads=1",
        "progress_bar=false", "report_to=none", "seed=0", "reward_funcs=[tests.stages.rl_rewards:letter_e_count]",
        *extra], online=True))


def test_the_higher_scored_completion_of_each_pair_comes_first():
    order = chosen_first(torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 0.0]))
    assert order.tolist() == [1, 0, 2, 3, 4, 5]                 # a tie keeps the sampled order, as TRL


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_online_dpo_raises_held_out_reward(tiny_model_dir, tmp_path, loss_type):
    result = run_online_dpo(config(tiny_model_dir, tmp_path, f"loss_type={loss_type}", "max_steps=20"),
                            train_data=PROMPTS)
    first = result.history[0]
    if loss_type == "sigmoid":
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)   # π_θ = π_ref: every margin is 0
    assert first["kl"] == 0.0 and first["rewards/margins"] == 0.0
    assert result.eval_before["kl"] == 0.0
    assert result.eval_after["reward"] > result.eval_before["reward"] + 0.3
    assert result.eval_after["kl"] > 0
    assert result.history[-1]["scores_margin"] > 0
