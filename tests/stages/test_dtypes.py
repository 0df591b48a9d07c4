"""Real dtypes in a stage: a bf16 checkpoint trained in its own dtype (dtype=auto) with float32 master
weights — the weights stay bf16, the optimizer works on float32 copies, and a resumed run continues
exactly."""

import pytest
import torch

from preftune.config import SFTConfig, load_config
from preftune.modeling.load import load_causal_lm
from preftune.stages.sft import run_sft
from preftune.testing import tiny_llama, tiny_tokenizer
from tests.architectures.matrix import PAIRS

ROWS = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16")
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _cfg(model_dir, out, *extra):
    return load_config(SFTConfig, None, [f"model_name_or_path={model_dir}", f"output_dir={out}", "dtype=auto",
                                         "fp32_master_weights=true", "per_device_train_batch_size=2",
                                         "learning_rate=1e-3", "logging_steps=1", "progress_bar=false", "report_to=none", "seed=0",
                                         *extra])


def test_bf16_weights_with_float32_masters_train_and_resume_exactly(bf16_dir, tmp_path):
    full = run_sft(_cfg(bf16_dir, tmp_path / "run", "max_steps=3", "save_steps=2"), train_data=ROWS)
    resumed = run_sft(_cfg(bf16_dir, tmp_path / "run", "max_steps=3", "save_steps=2",
                           f"resume={tmp_path / 'run' / 'checkpoint-2'}"), train_data=ROWS)
    assert full.history[-1]["loss"] == pytest.approx(resumed.history[-1]["loss"], abs=1e-6)
    final = load_causal_lm(str(full.final_dir), dtype="auto")
    start = load_causal_lm(str(bf16_dir), dtype="auto")
    assert {p.dtype for p in final.parameters()} == {torch.bfloat16}
    moved = [n for (n, p), q in zip(final.named_parameters(), start.parameters()) if not torch.equal(p, q)]
    assert moved   # updates of 1e-3 × Adam's unit step reach the bf16 weights through the float32 masters
