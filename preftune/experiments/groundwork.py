"""The stages every method builds on, in order: the prompt split, r*, π_SFT, the preference pairs, best-of-N
and the reward model. Each is a function of the experiment (:class:`~preftune.experiments.protocol.
Experiment`: its settings, output folder and shared objects) returning its ``done.json`` payload."""

from __future__ import annotations

import json

from preftune.assets.imdb import write_jsonl
from preftune.config import RMConfig, SFTConfig
from preftune.experiments import rstar, sampling
from preftune.experiments.data import make_pairs as pairs_from_samples
from preftune.experiments.data import split_reviews
from preftune.experiments.io import continue_or_restart, read_json, read_lines, write_json
from preftune.experiments.protocol import Experiment

BON_SEED = 4243
# The stages with held-out data evaluate it before training and after every epoch.
EVALUATE = {"eval_on_start": True, "eval_strategy": "epoch"}


def make_prompts(exp: Experiment) -> dict:
    cfg = exp.cfg
    split = split_reviews(cfg.num_train_prompts, cfg.num_eval_prompts, cfg.sft_num_reviews,
                          min_words=cfg.prompt_min_words, max_words=cfg.prompt_max_words,
                          sft_max_words=cfg.sft_max_words, seed=cfg.seed)
    folder = exp.out / "prompts"
    write_jsonl(split.train_prompts, folder / "train.jsonl")
    write_jsonl(split.eval_prompts, folder / "eval.jsonl")
    write_jsonl(split.sft_rows, folder / "sft.jsonl")
    write_json(folder / "classifier_rows.json", split.classifier_rows)
    words = [len(r["prompt"].split()) for r in split.train_prompts + split.eval_prompts]
    exp.log(f"prompts: {len(split.train_prompts)} train, {len(split.eval_prompts)} held out, "
             f"{sum(words) / len(words):.1f} words on average; {len(split.sft_rows)} SFT reviews; "
             f"{len(split.classifier_rows)} reviews left for r*")
    return {"train": len(split.train_prompts), "eval": len(split.eval_prompts), "sft": len(split.sft_rows),
            "classifier_reviews": len(split.classifier_rows), "mean_prompt_words": sum(words) / len(words)}

def make_rstar(exp: Experiment) -> dict:
    cfg = exp.cfg
    if cfg.reward != "classifier":
        exp.log(f"r* = {cfg.reward} (no classifier to train)")
        return {"reward": cfg.reward}
    rows = read_json(exp.out / "prompts" / "classifier_rows.json")
    pipeline, metrics = rstar.train_classifier(rows, window_words=cfg.classifier_window_words,
                                               max_reviews=cfg.classifier_max_reviews, seed=cfg.seed,
                                               log=exp.log)
    rstar.save(pipeline, exp.out / "rstar" / "classifier.npz", cfg.reward_includes_prompt)
    return {"reward": "classifier", **metrics}

def make_sft(exp: Experiment) -> dict:
    cfg = exp.cfg
    rows = [json.loads(line) for line in (exp.out / "prompts" / "sft.jsonl").read_text().splitlines()]
    from preftune.stages.sft import run_sft

    sft_cfg = exp.stage_config(SFTConfig, {
        "model_name_or_path": cfg.model_name_or_path, "output_dir": str(exp.out / "sft"),
        "max_length": cfg.max_prompt_length + 2 * cfg.sft_max_words, "learning_rate": cfg.sft_learning_rate,
        "per_device_train_batch_size": cfg.sft_batch_size, "per_device_eval_batch_size": cfg.sft_batch_size,
        "num_train_epochs": cfg.sft_epochs, "eval_size": max(1, min(32, len(rows) // 8)), **EVALUATE,
        "save_total_limit": 1, **continue_or_restart(exp.out / "sft"),
    }, cfg.sft_extra)
    result = run_sft(sft_cfg, train_data=rows)
    exp.prune(exp.out / "sft")
    return {"eval_before": result.eval_before, "eval_after": result.eval_after, "steps": len(result.history)}

def make_pairs(exp: Experiment) -> dict:
    cfg = exp.cfg
    folder = exp.out / "pairs"
    prompts = exp.prompts("train")
    per_shard = max(1, cfg.generation_batch_size // cfg.samples_per_prompt)
    partial = folder / "samples.partial.jsonl"
    done: dict[int, list[dict]] = {}
    if partial.is_file():
        for line in partial.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption
            done.setdefault(row["shard"], []).append(row)
    shards = [prompts[i:i + per_shard] for i in range(0, len(prompts), per_shard)]
    done = {s: rows for s, rows in done.items() if s < len(shards) and len(rows) == len(shards[s])}
    before = set(done)
    if done:
        exp.log(f"pairs: {len(done)} of {len(shards)} sample batches done before, continuing")
    model = sampling.load_policy_folder(exp.sft_dir, exp.sft_dir, exp.device)
    with open(partial, "w") as f:  # rewrite the complete shards, then append new ones
        for s in sorted(done):
            f.writelines(json.dumps(r) + "\n" for r in done[s])
        for s, shard in enumerate(shards):
            if s in done:
                continue
            got = exp.sample(model, shard, cfg.samples_per_prompt, cfg.seed * 100_003 + s,
                             f"π_SFT samples {s + 1}/{len(shards)}", False)
            rows = [{"shard": s, "prompt": p, "completions": c, "rewards": r}
                    for p, c, r in zip(got.prompts, got.completions, got.rewards)]
            f.writelines(json.dumps(r) + "\n" for r in rows)
            f.flush()
            done[s] = rows
    samples = [r for s in sorted(done) for r in done[s]]
    write_jsonl(samples, folder / "samples.jsonl")
    partial.unlink()
    pairs = pairs_from_samples(samples, cfg.pair_mode, cfg.pairs_per_prompt, cfg.bradley_terry_scale, cfg.seed)
    write_jsonl(pairs, folder / "pairs.jsonl")
    all_r = [x for r in samples for x in r["rewards"]]
    gap = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
    exp.log(f"pairs: {len(pairs)} from {len(all_r)} samples (mean r* {sum(all_r) / len(all_r):.3f}); "
            f"mean r* gap chosen − rejected {sum(gap) / max(len(gap), 1):+.3f}")
    if not pairs:
        raise ValueError("no preference pairs: every prompt's samples tied or were empty")
    # Samples drawn by this invocation (a resumed stage's CPU time covers only those).
    sampled_now = sum(len(shard) for s, shard in enumerate(shards) if s not in before) * cfg.samples_per_prompt
    return {"pairs": len(pairs), "samples": len(all_r), "sampled_now": sampled_now,
            "mean_sample_reward": sum(all_r) / len(all_r),
            "mean_gap": sum(gap) / len(gap), "wrong_way": sum(1 for g in gap if g < 0)}

def make_best_of_n(exp: Experiment) -> dict:
    cfg = exp.cfg
    k = max(cfg.best_of_n)
    prompts = exp.prompts("eval")[:cfg.bon_prompts]
    model = sampling.load_policy_folder(exp.sft_dir, exp.sft_dir, exp.device)
    s = exp.sample(model, prompts, k, BON_SEED + cfg.seed, f"best-of-{k} samples", False)
    write_jsonl([{"prompt": p, "completions": c, "rewards": r} for p, c, r in zip(s.prompts, s.completions,
                                                                                 s.rewards)],
                exp.out / "bon" / "samples.jsonl")
    return {"samples": k, "prompts": len(prompts),
            "points": {str(n): sampling.best_of_n(s.rewards, n) for n in sorted(cfg.best_of_n)}}

def make_reward_model(exp: Experiment) -> dict:
    cfg = exp.cfg
    from preftune.stages.reward_model import run_rm

    n = len(read_lines(exp.out / "pairs" / "pairs.jsonl"))
    eval_size = min(cfg.rm_eval_size, n // 4)
    values = {"model_name_or_path": str(exp.sft_dir), "output_dir": str(exp.out / "rm"),
              "max_length": cfg.max_prompt_length + cfg.max_new_tokens + 8, "learning_rate": cfg.rm_learning_rate,
              "per_device_train_batch_size": cfg.rm_batch_size, "per_device_eval_batch_size": cfg.rm_batch_size,
              "num_train_epochs": cfg.rm_epochs, "eval_size": eval_size, "save_total_limit": 1, **EVALUATE,
              "lr_scheduler_type": "constant_with_warmup", "warmup_ratio": 0.1,
              **continue_or_restart(exp.out / "rm")}
    rm_cfg = exp.stage_config(RMConfig, values, cfg.rm_extra)
    result = run_rm(rm_cfg, train_data=str(exp.out / "pairs" / "pairs.jsonl"))
    exp.prune(exp.out / "rm")
    return {"eval_before": result.eval_before, "eval_after": result.eval_after, "eval_pairs": eval_size,
            "trained_sequences": 2 * (n - eval_size) * cfg.rm_epochs}

