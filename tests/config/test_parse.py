"""Reading values: a string key keeps its text exactly; other keys read the text as YAML; CLI spellings."""

import pytest

from preftune.config import DPOConfig, Text, cli_overrides, load_config, read_settings
from preftune.config.parse import valued_keys
from preftune.errors import ConfigError

BASE = ["model_name_or_path=m", "train_file=t.jsonl"]


def test_string_keys_keep_their_text_exactly_from_a_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    # YAML 1.1 would read 0777 as the octal number 511, 1:30 as the sexagesimal 90 and 1e3 as a string.
    path.write_text("model_name_or_path: 0777\ntrain_file: 1:30\noutput_dir: runs/#3 # a comment\n"
                    "eval_file: null\nresume: 'null'\nlearning_rate: 1e-5\nbeta: 0.25\nbf16: yes\n"
                    "loss_type: [sigmoid, ipo]\nloss_weights: [1, 0.5]\n")
    cfg = load_config(DPOConfig, path)
    assert (cfg.model_name_or_path, cfg.train_file, cfg.output_dir) == ("0777", "1:30", "runs/#3")
    assert cfg.eval_file is None and cfg.resume == "null"
    assert cfg.learning_rate == 1e-5 and cfg.beta == 0.25 and cfg.bf16 is True
    assert cfg.loss_type == ["sigmoid", "ipo"] and cfg.loss_weights == [1.0, 0.5]


def test_string_keys_keep_their_text_exactly_from_the_command_line():
    cfg = load_config(DPOConfig, None, ["model_name_or_path=0o17", "train_file=010", "output_dir=a #b",
                                        "eval_file=", "beta=0.5"])
    assert (cfg.model_name_or_path, cfg.train_file, cfg.output_dir, cfg.eval_file) == ("0o17", "010", "a #b", None)
    assert cfg.beta == 0.5


def test_overrides_win_over_the_file_and_keywords_over_both(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.5\nseed: 1\n")
    raw = read_settings(path, ["beta=0.2"], seed=7)
    assert raw["beta"] == "0.2" and isinstance(raw["beta"], Text) and raw["seed"] == 7


def test_every_command_line_spelling_trl_users_type():
    tokens = ["--beta", "0.2", "--bf16", "--loss_type", "sigmoid", "ipo", "--max_length=64", "max_prompt_length=32", "seed=3",
              "--loss-weights", "1", "0.5", "--precompute_ref_log_probs", "false", "--use_peft", "--no_padding_free"]
    cfg = load_config(DPOConfig, None, BASE + cli_overrides(tokens))
    assert cfg.beta == 0.2 and cfg.bf16 is True and cfg.loss_type == ["sigmoid", "ipo"]
    assert cfg.max_length == 64 and cfg.seed == 3 and cfg.loss_weights == [1.0, 0.5]
    assert cfg.precompute_ref_log_probs is False and cfg.use_peft is True and cfg.padding_free is False


def test_a_value_with_an_equals_sign_after_a_key_that_takes_values_is_that_value():
    tokens = ["--optim", "sgd", "--optim_args", "momentum=0.9,nesterov=true", "--use_peft", "lora_r=8"]
    cfg = load_config(DPOConfig, None, BASE + cli_overrides(tokens, valued_keys(DPOConfig)))
    assert cfg.optim_args == "momentum=0.9,nesterov=true" and cfg.use_peft is True and cfg.lora_r == 8
    assert {"optim_args", "learning_rate", "loss_type"} <= valued_keys(DPOConfig)
    assert not {"use_peft", "padding_free", "bf16", "precompute_ref_log_probs"} & valued_keys(DPOConfig)


def test_a_stray_word_on_the_command_line_is_an_error():
    with pytest.raises(ConfigError, match="argument 'oops': settings look like key=value or --key value"):
        cli_overrides(["oops"])
    with pytest.raises(ConfigError, match="override '=1' must look like key=value"):
        read_settings(None, ["=1"])
