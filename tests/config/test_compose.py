"""Stage configs composed from groups: every problem at once, Python values read as the CLI reads them."""

import dataclasses
import pickle

import pytest

from preftune.config import DPOConfig, EvalConfig, RLConfig, RMConfig, SFTConfig, load_config
from preftune.config.groups import TextGroup
from preftune.config.loss import LossGroup
from preftune.config.optim import OptimGroup
from preftune.errors import ConfigError

BASE = {"model_name_or_path": "m", "train_file": "t.jsonl"}


def test_every_problem_is_reported_at_once_each_with_its_key():
    with pytest.raises(ConfigError) as err:
        load_config(DPOConfig, None, ["betta=0.1", "learning_rate=-1", "bf16=maybe", "loss_type=nope",
                                      "lora_r=8", "max_prompt_length=1100"])
    problems = err.value.problems
    assert str(err.value).startswith("6 problems in the config:\n  - ")
    expected = ["unknown config key 'betta' for DPOConfig (did you mean beta",
                "bf16 must be true or false, got 'maybe'",
                "lora_r is set but use_peft is false",
                "max_prompt_length must be < max_length (1024)",
                "learning_rate must be > 0, got -1.0",
                "loss_type: unknown loss 'nope'"]
    assert len(problems) == len(expected)
    for start in expected:
        assert sum(p.startswith(start) for p in problems) == 1, (start, problems)


def test_a_value_of_the_wrong_type_is_reported_once_not_again_by_its_range_check():
    with pytest.raises(ConfigError) as err:
        DPOConfig(**BASE, beta="abc", per_device_train_batch_size=[2])
    assert sorted(err.value.problems) == ["beta must be a number, got 'abc'",
                                          "per_device_train_batch_size must be an integer, got [2]"]


def test_python_values_are_read_as_the_command_line_reads_them():
    cfg = DPOConfig(**BASE, loss_type="ipo", learning_rate="5e-7", bf16="true", max_steps="3", beta=1)
    assert cfg.loss_type == ["ipo"] and cfg.learning_rate == 5e-7 and cfg.bf16 is True
    assert cfg.max_steps == 3 and cfg.beta == 1.0 and isinstance(cfg.beta, float)
    assert DPOConfig(**BASE, loss_type=("sigmoid", "ipo")).loss_type == ["sigmoid", "ipo"]


def test_an_unknown_python_keyword_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate' for SFTConfig \(did you mean "
                                          r"learning_rate"):
        SFTConfig(**BASE, lerning_rate=1e-5)


def test_replace_rebuilds_and_rechecks():
    cfg = DPOConfig(**BASE)
    assert dataclasses.replace(cfg, beta=0.5).beta == 0.5
    with pytest.raises(ConfigError, match="beta must be > 0"):
        dataclasses.replace(cfg, beta=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 1.0


def test_configs_pickle_and_compare():
    cfg = DPOConfig(**BASE, beta=0.3)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg != DPOConfig(**BASE, beta=0.4)


def test_stages_take_only_their_keys_and_say_why_one_is_left_out():
    for cls, group in [(SFTConfig, OptimGroup), (DPOConfig, LossGroup), (RMConfig, TextGroup)]:
        assert {f.name for f in dataclasses.fields(group)} <= {f.name for f in dataclasses.fields(cls)}
    assert "beta" not in {f.name for f in dataclasses.fields(SFTConfig)}
    with pytest.raises(ConfigError) as err:
        RLConfig(**BASE, reward="m:f", max_length=64, torch_compile=True)
    assert err.value.problems == [
        "unknown config key 'max_length' for RLConfig: online stages bound completions with their own key "
        "(max_new_tokens / max_completion_length) and prompts with max_prompt_length",
        "unknown config key 'torch_compile' for RLConfig: sampling would recompile for every generated length "
        "(sft and dpo compile)"]


def test_each_stage_keeps_its_own_defaults():
    # TRL's defaults: SFTConfig 2e-5, DPOConfig 1e-6, RewardConfig 1e-4, RLOOConfig 1e-6.
    assert SFTConfig(**BASE).output_dir == "runs/sft" and SFTConfig(**BASE).learning_rate == 2e-5
    assert DPOConfig(**BASE).learning_rate == 1e-6 and RMConfig(**BASE).learning_rate == 1e-4
    assert RLConfig(**BASE, reward="m:f").learning_rate == 1e-6
    assert DPOConfig(**BASE).output_dir == "runs/dpo"
    assert RMConfig(**BASE).loss_type == "bradley_terry"
    assert EvalConfig(model_name_or_path="m", ref_model_name_or_path="r", eval_file="e").loss_type == ["sigmoid"]


def test_lora_target_modules_without_use_peft_is_an_error_not_silently_ignored():
    with pytest.raises(ConfigError, match="lora_target_modules is set but use_peft is false"):
        DPOConfig(**BASE, lora_target_modules=["q_proj"])
    assert DPOConfig(**BASE, use_peft=True, lora_target_modules="q_proj").lora_target_modules == ["q_proj"]
