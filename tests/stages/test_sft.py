import pytest

from preftune.config import SFTConfig, load_config
from preftune.stages.sft import run_sft
from tests.conftest import pre_trl


def test_sft_on_chosen_lowers_held_out_nll(tiny_model_dir, separable_files, tmp_path):
    train, held_out = separable_files
    cfg = load_config(SFTConfig, None, pre_trl([
        f"model_name_or_path={tiny_model_dir}", f"train_file={train}", f"eval_file={held_out}",
        f"output_dir={tmp_path}", "completion_field=chosen", "max_length=48", "max_prompt_length=16",
        "learning_rate=3e-3", "num_train_epochs=2", "progress_bar=false", "report_to=none"]))
    result = run_sft(cfg)
    assert result.eval_after["loss"] < result.eval_before["loss"] - 1.0
    assert result.eval_after["perplexity"] == pytest.approx(2.718281828 ** result.eval_after["loss"], rel=1e-6)
    assert (result.final_dir / "model.safetensors").is_file()
