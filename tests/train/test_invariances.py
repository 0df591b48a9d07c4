"""Invariances a user relies on without thinking about them: how a batch is split into micro-batches,
how much padding it carries, and the seed decide exactly what they should and nothing else."""

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import DPOConfig, SFTConfig, load_config
from preftune.data.collate import collate_preferences
from preftune.data.dataset import DataSettings, build_preference_dataset
from preftune.modeling.load import load_causal_lm, load_tokenizer
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.stages.dpo import run_dpo
from preftune.stages.sft import run_sft
from preftune.train.metrics import read_metrics
from tests.conftest import pre_trl, separable_rows, write_jsonl

COMMON = pre_trl(["max_length=48", "max_prompt_length=16", "max_steps=10", "learning_rate=1e-3", "logging_steps=1",
                  "progress_bar=false", "report_to=none", "threads=1", "seed=0"])


def weights(out):
    return load_file(out / "final" / "model.safetensors")


@pytest.mark.parametrize("stage", ["dpo", "sft"])
def test_batch_8_x_accumulation_1_equals_batch_1_x_accumulation_8(stage, tiny_model_dir, tmp_path):
    """SFT is the case that catches a per-micro-batch token mean: its micro-batches of one example
    have different token counts, so only a mean over the whole step's tokens makes them agree."""
    data = write_jsonl(separable_rows(80, seed=0), tmp_path / "train.jsonl")
    cls, run = (DPOConfig, run_dpo) if stage == "dpo" else (SFTConfig, run_sft)
    extra = ["completion_field=chosen"] if stage == "sft" else []
    outs = []
    for batch, accumulation in ((8, 1), (1, 8)):
        out = tmp_path / f"b{batch}"
        run(load_config(cls, None, [f"model_name_or_path={tiny_model_dir}", f"train_file={data}", f"output_dir={out}",
                                    f"per_device_train_batch_size={batch}",
                                    f"gradient_accumulation_steps={accumulation}", *COMMON, *extra]))
        outs.append(out)
    a, b = weights(outs[0]), weights(outs[1])
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6
    moved = max((a[k] - w).abs().max().item() for k, w in load_file(tiny_model_dir / "model.safetensors").items())
    assert moved > 1e-3        # they did train: agreement is not both standing still


def test_extra_padding_leaves_log_probs_unchanged(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    dataset = build_preference_dataset(separable_rows(8, seed=3), tokenizer, DataSettings(48, 16, None))
    policy = SequenceLogprobModel(load_causal_lm(str(tiny_model_dir)).eval(), chunk_size=7)
    examples = dataset.examples
    tight = collate_preferences(examples, list(range(8)), pad_token_id=tokenizer.pad_token_id)
    padded = collate_preferences(examples, list(range(8)), pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=64)
    assert padded.rows.input_ids.shape[1] == 64 > tight.rows.input_ids.shape[1]
    with torch.no_grad():
        a = policy(tight.rows.input_ids, tight.rows.attention_mask, tight.rows.loss_mask)
        b = policy(padded.rows.input_ids, padded.rows.attention_mask, padded.rows.loss_mask)
        alone = [policy(tight.rows.input_ids[i:i + 1], tight.rows.attention_mask[i:i + 1],
                        tight.rows.loss_mask[i:i + 1]).logps for i in range(16)]
    assert torch.equal(a.lengths, b.lengths)
    assert (a.logps - b.logps).abs().max().item() < 1e-6
    assert (a.logps - torch.cat(alone)).abs().max().item() < 1e-6   # batch-mates' padding changes nothing either


def test_the_same_seed_gives_a_bitwise_identical_run_and_another_seed_another(tiny_model_dir, tmp_path):
    data = write_jsonl(separable_rows(48, seed=0), tmp_path / "train.jsonl")

    def run(name, seed):
        out = tmp_path / name
        run_dpo(load_config(DPOConfig, None, [f"model_name_or_path={tiny_model_dir}", f"train_file={data}",
                                              f"output_dir={out}", "per_device_train_batch_size=4",
                                              *COMMON, f"seed={seed}"]))
        return [(r["loss"], r["grad_norm"]) for r in read_metrics(out / "metrics.jsonl", "train")], weights(out)

    (losses_a, wa), (losses_b, wb), (losses_c, wc) = run("a", 0), run("b", 0), run("c", 1)
    assert losses_a == losses_b
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert losses_a != losses_c                               # a different seed shuffles differently
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
