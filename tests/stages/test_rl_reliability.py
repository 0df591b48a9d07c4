"""The reliability guarantees of the shared loop hold for online RL too (it is the same loop): the NaN
guard, fault injection, SIGKILL then resume=latest continuing bitwise (sampling included), token
counts at every checkpoint, and gradient accumulation over micro-batches of a rollout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.stages.grpo import run_grpo
from preftune.stages.rl import run_rl
from preftune.testing import tiny_llama, tiny_tokenizer
from preftune.train.checkpoint import TRAINER_STATE, verify_checkpoint
from preftune.train.loop import TrainingDiverged
from preftune.train.metrics import read_metrics
from preftune.train.tensor_tree import load_tree
from tests.stages.test_grpo import PROMPTS, grpo_config
from tests.stages.test_rl import rl_config


@pytest.fixture(scope="module")
def eos_model(tmp_path_factory) -> Path:
    """A tiny Llama whose EOS is likely: completions of many lengths, so a per-micro-batch token mean
    would weigh short micro-batches' tokens more than the step's mean does."""
    path = tmp_path_factory.mktemp("tiny-llama-eos")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), seed=1)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] += 3 * model.lm_head.weight.std()
        model.lm_head.weight[tokenizer.eos_token_id] += 0.5 * model.model.norm.weight.sign()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


# --- the NaN guard, and PREFTUNE_FAULT=nan_loss, inside an online stage ----------------------------------

def test_non_finite_steps_in_a_row_stop_an_rl_run_and_keep_the_last_good_checkpoint(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("PREFTUNE_FAULT", "nan_loss:3-12")
    with pytest.raises(TrainingDiverged, match=r"stopped at step 5: 3 optimizer steps in a row.*checkpoint-2"):
        run_grpo(grpo_config(tiny_model_dir, tmp_path, "max_steps=12", "save_steps=2", "max_consecutive_skips=3",
                             "eval_size=0"), train_data=PROMPTS)
    assert verify_checkpoint(tmp_path / "checkpoint-2") is None
    assert not (tmp_path / "final").exists()
    assert [r["skipped_steps"] for r in read_metrics(tmp_path / "metrics.jsonl", "train")] == [0, 0, 1, 2, 3]


def test_one_non_finite_step_is_skipped_and_the_run_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_FAULT", "nan_loss:2")
    result = run_rl(rl_config(tiny_model_dir, tmp_path, "rloo", "num_generations=4", "max_steps=4", "eval_size=0"),
                    train_data=PROMPTS)
    assert [h["skipped_steps"] for h in result.history] == [0, 1, 1, 1]
    assert all(torch.isfinite(torch.tensor(h["policy_loss"])) for i, h in enumerate(result.history) if i != 1)


# --- SIGKILL, then resume=latest: bitwise the run that was never interrupted ------------------------------

STAGES = {
    # 2 passes × 2 micro-batches per generation: checkpoint 2 falls inside generation 0 (it must carry it).
    "grpo": ["grpo", "per_device_train_batch_size=8", "num_generations=4", "steps_per_generation=2",
             "num_iterations=2", "max_completion_length=8", "reward_funcs=[tests.stages.rl_rewards:letter_e_count]"],
    # ppo_epochs 2 × num_mini_batches 2 per rollout, an adaptive β: the value head and β must resume too.
    "ppo": ["ppo", "per_device_train_batch_size=8", "ppo_epochs=2", "num_mini_batches=2", "adaptive_kl=true",
            "kl_horizon=32", "max_new_tokens=8", "reward=tests.stages.rl_rewards:letter_e_count"],
}
COMMON = ["max_prompt_length=16", "max_steps=7", "save_steps=2", "learning_rate=1e-2", "logging_steps=1",
          "progress_bar=false", "report_to=none", "threads=1", "seed=3", "eval_size=16",
          "eval_strategy=steps", "eval_steps=1000000", "disable_dropout=false"]


def preftune(stage: str, out: Path, model: Path, data: Path, *extra: str, fault: str | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("PREFTUNE_FAULT", None)
    if fault:
        env["PREFTUNE_FAULT"] = fault
    cmd = [sys.executable, "-m", "preftune", *STAGES[stage], f"model_name_or_path={model}", f"train_file={data}",
           f"output_dir={out}", *COMMON, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_rl_run(stage, dropout_model, prompt_file,
                                                                         tmp_path):
    ok(preftune(stage, tmp_path / "whole", dropout_model, prompt_file))
    out = tmp_path / "out"
    killed = preftune(stage, out, dropout_model, prompt_file, fault="kill_after_step:3")
    assert killed.returncode == -9
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")][-1] == 3   # it trained past checkpoint 2
    resumed = ok(preftune(stage, out, dropout_model, prompt_file, "resume=latest"))
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in resumed.stdout
    whole, again = (read_metrics(o / "metrics.jsonl", "train") for o in (tmp_path / "whole", out))
    keys = ["loss", "reward", "grad_norm", "tokens_seen"] + (["kl_coef", "value_loss"] if stage == "ppo" else [])
    assert [[r[k] for k in keys] for r in whole] == [[r[k] for k in keys] for r in again]   # exact floats
    held_out = [{k: v for k, v in read_metrics(o / "metrics.jsonl", "eval")[-1].items() if k != "time"}
                for o in (tmp_path / "whole", out)]
    assert held_out[0] == held_out[1]
    a, b = load_file(tmp_path / "whole" / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_inside_a_generation_saves_and_the_resumed_grpo_run_is_bitwise_equal(dropout_model, prompt_file,
                                                                                      tmp_path):
    """The signal guarantee of the shared loop, in an online stage: paused after step 3 (inside generation 0,
    which trains steps 1-4), SIGTERM stops it there with checkpoint-3 (carrying the generation) and exit 143."""
    import signal
    import time

    ok(preftune("grpo", tmp_path / "whole", dropout_model, prompt_file))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "PREFTUNE_FAULT": "pause_after_step:3"}
    cmd = [sys.executable, "-m", "preftune", *STAGES["grpo"], f"model_name_or_path={dropout_model}",
           f"train_file={prompt_file}", f"output_dir={out}", *COMMON]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").is_file()
               and any(r["step"] == 3 for r in read_metrics(out / "metrics.jsonl", "train"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert "checkpoint-3 is saved" in stderr
    ok(preftune("grpo", out, dropout_model, prompt_file, "resume=latest"))
    whole, again = (read_metrics(o / "metrics.jsonl", "train") for o in (tmp_path / "whole", out))
    keys = ["loss", "reward", "grad_norm", "tokens_seen"]
    assert [[r[k] for k in keys] for r in whole] == [[r[k] for k in keys] for r in again]
    a, b = load_file(tmp_path / "whole" / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- tokens_seen: every step, all ranks, exact at every checkpoint -----------------------------------------

def test_tokens_seen_counts_every_step_not_only_logged_ones(tiny_model_dir, tmp_path):
    every = run_grpo(grpo_config(tiny_model_dir, tmp_path / "every", "max_steps=5", "eval_size=0"), train_data=PROMPTS)
    sparse = run_grpo(grpo_config(tiny_model_dir, tmp_path / "sparse", "max_steps=5", "eval_size=0",
                                  "logging_steps=3", "save_steps=2", "save_total_limit=null"), train_data=PROMPTS)
    seen = [h["tokens_seen"] for h in every.history]
    assert seen == sorted(seen) and seen[0] > 0
    assert [h["tokens_seen"] for h in sparse.history] == [seen[2], seen[4]]
    saved = load_tree(tmp_path / "sparse" / "checkpoint-2", TRAINER_STATE)
    assert saved["tokens_seen"] == seen[1]        # step 2 was not logged, its tokens are counted all the same


# --- gradient accumulation over micro-batches of a rollout ---------------------------------------------------

@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_one_micro_batch_equals_the_rollout_split_k_ways(stage, eos_model, tmp_path):
    """The same rollout (same prompts, same samples) in one micro-batch or in four with accumulation 4:
    the same steps. GRPO's dapo normaliser is the step's tokens, PPO's the step's tokens too."""
    tiny_model_dir = eos_model
    outs = []
    for batch, accumulation in ((16, 1), (4, 4)):
        out = tmp_path / f"b{batch}"
        if stage == "grpo":
            run_grpo(grpo_config(tiny_model_dir, out, f"per_device_train_batch_size={batch}",
                                 f"gradient_accumulation_steps={accumulation}", "max_steps=4", "eval_size=0",
                                 "learning_rate=1e-3"), train_data=PROMPTS)
        else:
            run_rl(rl_config(tiny_model_dir, out, "ppo", f"per_device_train_batch_size={batch // 2}",
                             f"gradient_accumulation_steps={accumulation}", "max_steps=4", "ppo_epochs=2",
                             "eval_size=0", "learning_rate=1e-3"), train_data=PROMPTS)
        outs.append(out)
    a, b = (load_file(o / "final" / "model.safetensors") for o in outs)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    start = load_file(tiny_model_dir / "model.safetensors")
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3    # they did train
    lengths = [h["response_length"] for h in read_metrics(outs[0] / "metrics.jsonl", "train")]
    assert min(lengths) < 8                  # some completions stopped early: micro-batches of unequal token counts
