"""Two gloo processes under torchrun take the same optimizer steps as one process with doubled
gradient accumulation: same global batches, same averaged gradients, same losses."""

import os
import subprocess
import sys

import pytest
import torch

from preftune.train.metrics import read_metrics
from tests.conftest import pre_trl

pytestmark = pytest.mark.distributed


def _run(args, nproc, env):
    if nproc == 1:
        cmd = [sys.executable, "-m", "preftune", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
               "-m", "preftune", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("stage", ["dpo", "sft"])
def test_two_processes_match_one_process_with_double_accumulation(stage, tiny_model_dir, separable_files,
                                                                  tmp_path):
    train, held_out = separable_files
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache")}
    common = pre_trl([f"model_name_or_path={tiny_model_dir}", f"train_file={train}", f"eval_file={held_out}",
                      "max_length=48", "max_prompt_length=16", "per_device_train_batch_size=4", "max_steps=5",
                      "learning_rate=1e-3", "logging_steps=1", "progress_bar=false", "report_to=none", "threads=1"])
    if stage == "sft":
        common.append("completion_field=chosen")
    _run([stage, *common, f"output_dir={tmp_path / 'one'}", "gradient_accumulation_steps=2"], 1, env)
    two = _run([stage, *common, f"output_dir={tmp_path / 'two'}", "gradient_accumulation_steps=1"], 2, env)
    assert "2 process(es)" in two.stdout

    one_train = read_metrics(tmp_path / "one" / "metrics.jsonl", "train")
    two_train = read_metrics(tmp_path / "two" / "metrics.jsonl", "train")
    assert len(one_train) == len(two_train) == 5
    for a, b in zip(one_train, two_train):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), (a["step"], a["loss"], b["loss"])
    one_eval = read_metrics(tmp_path / "one" / "metrics.jsonl", "eval")
    two_eval = read_metrics(tmp_path / "two" / "metrics.jsonl", "eval")
    assert two_eval[-1]["loss"] == pytest.approx(one_eval[-1]["loss"], abs=1e-5)


def test_kto_reference_point_is_estimated_over_the_global_batch(tiny_model_dir, tmp_path):
    """KTO's z is a batch statistic: two processes with 4 examples each must see the z of all 8, so
    their steps equal one process with a batch of 8 (accumulation would split z, so it is not used)."""
    from tests.conftest import separable_rows, write_jsonl
    from tests.stages.test_dpo_layouts import unpaired_rows

    train = write_jsonl(unpaired_rows(separable_rows(40, seed=0)), tmp_path / "train.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache")}
    common = ["dpo", *pre_trl(["loss_type=kto", f"model_name_or_path={tiny_model_dir}", f"train_file={train}",
                               "max_length=48", "max_prompt_length=16", "max_steps=6", "learning_rate=1e-3",
                               "logging_steps=1", "progress_bar=false", "report_to=none", "threads=1"])]
    _run([*common, f"output_dir={tmp_path / 'one'}", "per_device_train_batch_size=8"], 1, env)
    _run([*common, f"output_dir={tmp_path / 'two'}", "per_device_train_batch_size=4"], 2, env)
    one = read_metrics(tmp_path / "one" / "metrics.jsonl", "train")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl", "train")
    assert len(one) == len(two) == 6 and max(h["kl"] for h in one) > 0.1  # z not clamped at 0 throughout
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-5)


def test_fsdp_matches_one_process_and_its_sharded_checkpoint_resumes_under_another_process_count(
        tiny_model_dir, separable_files, tmp_path):
    """FSDP2 over 2 gloo processes takes the steps of 1 process with doubled accumulation; its sharded
    checkpoint (torch.distributed.checkpoint) resumes in 1 process and continues with the same losses;
    the final folder is one plain Hugging Face model."""
    from transformers import AutoModelForCausalLM

    train, _ = separable_files
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache")}
    common = ["dpo", *pre_trl([f"model_name_or_path={tiny_model_dir}", f"train_file={train}", "max_length=48",
                               "max_prompt_length=16", "per_device_train_batch_size=4", "max_steps=6",
                               "learning_rate=1e-3", "logging_steps=1", "progress_bar=false", "report_to=none",
                               "threads=1"])]
    _run([*common, f"output_dir={tmp_path / 'one'}", "gradient_accumulation_steps=2"], 1, env)
    _run([*common, f"output_dir={tmp_path / 'fsdp'}", "fsdp=true", "save_steps=3"], 2, env)
    assert (tmp_path / "fsdp" / "checkpoint-3" / "dcp" / ".metadata").is_file()
    one = read_metrics(tmp_path / "one" / "metrics.jsonl", "train")
    sharded = read_metrics(tmp_path / "fsdp" / "metrics.jsonl", "train")
    for a, b in zip(one, sharded, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)

    _run([*common, f"output_dir={tmp_path / 'fsdp'}", "fsdp=true", "gradient_accumulation_steps=2",
          f"resume={tmp_path / 'fsdp' / 'checkpoint-3'}"], 1, env)
    resumed = read_metrics(tmp_path / "fsdp" / "metrics.jsonl", "train")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), (a["step"], a["loss"], b["loss"])
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final")
    for (name, p), q in zip(final.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


@pytest.mark.parametrize("stage, extra", [
    ("grpo", ["num_generations=4", "per_device_train_batch_size=8", "max_completion_length=8",
              "reward_funcs=[tests.stages.rl_rewards:letter_e_count]"]),
    ("rloo", ["num_generations=4", "per_device_train_batch_size=2", "max_new_tokens=8",
              "reward=tests.stages.rl_rewards:letter_e_count"]),
])
def test_online_rl_with_fsdp_on_two_processes_matches_one_process(stage, extra, tiny_model_dir, tmp_path):
    """fsdp=true for online RL: the two processes sample their halves of the global prompt batch (the samples
    depend on the seed and the prompt's slot, not on the process), generate in step (each forward of the
    sharded model is a collective), and take the steps of one process with doubled accumulation; the
    token count is summed over both."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Review number {i}:"}) + "\n" for i in range(64)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    common = [stage, f"model_name_or_path={tiny_model_dir}", f"train_file={prompts}", "max_prompt_length=16",
              "max_steps=4", "learning_rate=1e-2", "logging_steps=1", "progress_bar=false", "report_to=none",
              "threads=1", "eval_size=8", "eval_strategy=steps", "eval_steps=1000000", *extra]
    _run([*common, f"output_dir={tmp_path / 'one'}", "gradient_accumulation_steps=2"], 1, env)
    two = _run([*common, f"output_dir={tmp_path / 'two'}", "fsdp=true"], 2, env)
    assert "2 process(es)" in two.stdout
    one_train = read_metrics(tmp_path / "one" / "metrics.jsonl", "train")
    two_train = read_metrics(tmp_path / "two" / "metrics.jsonl", "train")
    assert len(one_train) == len(two_train) == 4
    for a, b in zip(one_train, two_train):
        assert b["reward"] == a["reward"] and b["tokens_seen"] == a["tokens_seen"]    # the same samples
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    one_eval = read_metrics(tmp_path / "one" / "metrics.jsonl", "eval")
    two_eval = read_metrics(tmp_path / "two" / "metrics.jsonl", "eval")
    assert two_eval[-1]["reward"] == pytest.approx(one_eval[-1]["reward"], abs=1e-6)
