"""The Python API a TRL user expects: `from preftune import DPOConfig, run_dpo` and friends."""

import subprocess
import sys

import pytest

import preftune
from preftune.errors import ConfigError


def test_the_stages_and_their_configs_import_from_the_package():
    from preftune import (
        DPOConfig,
        EvalConfig,
        RLConfig,
        RMConfig,
        SFTConfig,
        run_dpo,
        run_eval,
        run_rl,
        run_rm,
        run_sft,
    )
    from preftune.stages import dpo, evaluate, reward_model, rl, sft

    assert (run_dpo, run_sft, run_rm, run_rl, run_eval) == (dpo.run_dpo, sft.run_sft, reward_model.run_rm, rl.run_rl,
                                                            evaluate.run_eval)
    assert {DPOConfig, SFTConfig, RMConfig, RLConfig, EvalConfig} <= {getattr(preftune, n) for n in preftune.__all__}
    with pytest.raises(AttributeError):
        preftune.run_nothing  # noqa: B018


def test_import_preftune_stays_light():
    code = "import sys, preftune; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_values_are_read_as_the_command_line_reads_them():
    cfg = preftune.DPOConfig(model_name_or_path="m", loss_type="ipo", learning_rate="5e-7", beta="0.2",
                             gradient_checkpointing="false")
    assert cfg.loss_type == ["ipo"] and cfg.learning_rate == 5e-7 and cfg.beta == 0.2
    assert cfg.gradient_checkpointing is False
    with pytest.raises(ConfigError, match="2 problems"):
        preftune.DPOConfig(model_name_or_path="m", learning_rate="fast", betta=0.1)
