"""``SentimentExperimentConfig``: every setting of ``preftune experiment sentiment``, typed and frozen.

Same conventions as :mod:`preftune.config`: a YAML file plus ``key=value`` overrides, unknown keys and
bad values are errors naming the key (all of them at once). The defaults are the **CPU size** (about 3 h
on 2 cores, sized from the pilot: see the report's power section); ``size: gpu`` (or ``--gpu``) starts
from :data:`GPU_PRESET` instead, a size closer to the paper's, and ``size: pilot`` (``--pilot``) from
:data:`PILOT_PRESET`; any key set in the file or on the command line still wins over the preset.

Each stage run by the experiment (SFT, DPO, reward model, PPO, RLOO, GRPO, online DPO) is built from these keys; anything
else a stage accepts can be passed through its ``*_extra`` list, e.g. ``dpo_extra=[optimizer=rmsprop]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.config import from_dict, read_settings, to_dict
from preftune.config.fields import setting
from preftune.errors import ConfigError
from preftune.experiments.catalog import METHODS as TRAINED

METHODS = (*TRAINED, "bon")
PAIR_MODES = ("best_vs_worst", "bradley_terry")
CPU_METHODS = tuple(m for m in METHODS if m != "ppo_rm")


@dataclass(frozen=True)
class SentimentExperimentConfig:
    """Controlled sentiment generation (DPO paper §6.1, Fig. 2 left) at small scale."""

    size: str = setting("cpu", "cpu (the defaults: about 1 h on 2 quiet cores, resumable in slices), gpu "
                               "(GPU_PRESET: more prompts, samples and steps) or pilot (PILOT_PRESET: a small run "
                               "that measures r*'s noise and each stage's CPU cost, to size the others); keys you "
                               "set win over the preset.",
                        choices=("cpu", "gpu", "pilot"))
    output_dir: str = setting("runs/experiment_sentiment", "Folder of every stage's output, points.csv, frontier.png, "
                                                           "training.png, verdict.json and report.md. A rerun skips the stages already done.")
    model_name_or_path: str = setting("smollm2", "The base model π_SFT is fine-tuned from ('smollm2' = the embedded "
                                                 "SmolLM2-135M-Instruct, or a Hugging Face folder).")
    methods: list[str] = setting(list(CPU_METHODS), "Which methods to run: dpo, ipo (offline, on the π_SFT pairs), "
                                                    "ppo_gt (PPO on r*), ppo_rm (PPO on a reward model trained on "
                                                    "the pairs), rloo (on r*), grpo (on r*), online_dpo (pairs "
                                                    "sampled from the policy, judged by r*), bon (best-of-N from "
                                                    "π_SFT). The CPU size leaves ppo_rm out (its five-coefficient "
                                                    "sweep would cost a third more); the GPU size runs every method.")
    seed: int = setting(0, "Seed of the data split, sampling and every training stage.")
    threads: int | None = setting(2, "torch.set_num_threads for every stage (null = torch's default).")
    device: str = setting("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))
    bf16: bool = setting(False, "bf16 autocast in every stage (use on a GPU; slow on AVX2-only CPUs).")
    progress_bar: bool = setting(True, "The stages' live progress bars.")
    report_to: str = setting("none", "Stages' metric sinks: none, auto or tensorboard (metrics.jsonl is always written).",
                             choices=("auto", "tensorboard", "none"))

    # Prompts
    num_train_prompts: int = setting(192, "IMDb review prefixes used for preference pairs and PPO rollouts.")
    num_eval_prompts: int = setting(96, "Held-out prefixes (other reviews, other prefix texts) every point is measured on.")
    prompt_min_words: int = setting(2, "Shortest prefix, in words (the paper: 2-8).")
    prompt_max_words: int = setting(8, "Longest prefix, in words; each prompt draws its length uniformly (seeded).")
    max_prompt_length: int = setting(24, "Prompt tokens kept (cut from the left).")
    max_new_tokens: int = setting(24, "Most tokens sampled per completion (everywhere: pairs, PPO, evaluation).")
    generation_batch_size: int = setting(128, "Completions sampled per generate() call (pairs, best-of-N, evaluation).")

    # Ground-truth reward r*
    reward: str = setting("classifier", "r*: 'classifier' (TF-IDF + logistic regression trained here on IMDb reviews "
                                        "disjoint from the prompt and SFT reviews; P(positive)) or a callable "
                                        "'module:function' taking (prompts, completions) -> floats.")
    reward_includes_prompt: bool = setting(False, "classifier: score prompt + completion instead of the completion alone.")
    classifier_max_reviews: int | None = setting(None, "classifier: cap on its training reviews (null = all the "
                                                       "disjoint ones, ≈ 24,000).")
    classifier_window_words: int = setting(40, "classifier: train on windows of this many words of each review (closer "
                                               "to completions than whole reviews).")

    # π_SFT
    sft_num_reviews: int = setting(256, "IMDb reviews π_SFT is fine-tuned on (prefix -> the rest), disjoint from the "
                                        "prompt reviews.")
    sft_max_words: int = setting(32, "Words of each review's continuation kept for SFT.")
    sft_epochs: float = setting(1.0, "SFT epochs.")
    sft_learning_rate: float = setting(3e-5, "SFT peak learning rate (AdamW, linear decay).")
    sft_batch_size: int = setting(8, "SFT batch size.")
    sft_extra: list[str] = setting([], "More SFTConfig key=value settings.")

    # Preference pairs from π_SFT samples, labelled by r*
    samples_per_prompt: int = setting(4, "Completions sampled from π_SFT per training prompt.")
    pair_mode: str = setting("best_vs_worst", "best_vs_worst (pairs_per_prompt disjoint pairs: highest vs lowest r*, "
                                              "then second highest vs second lowest, ...) or bradley_terry (random "
                                              "pairs, label drawn with P(a > b) = σ(scale · (r*(a) − r*(b))).",
                             choices=PAIR_MODES)
    pairs_per_prompt: int = setting(1, "Pairs per prompt (best_vs_worst: at most samples_per_prompt / 2; ties skipped).")
    bradley_terry_scale: float = setting(10.0, "bradley_terry: scale of the r* difference inside σ (r* = P(positive) "
                                               "is in [0, 1], so scale 1 would make nearly coin-flip labels).")

    # DPO and IPO
    dpo_betas: list[float] = setting([0.05, 0.1, 0.5, 1.0], "One DPO run per β.")
    ipo_betas: list[float] = setting([0.1], "One IPO run per β (IPO's τ: target log-ratio margin 1/(2τ) on summed "
                                     "log-probs, loss ipo_sum).")
    dpo_epochs: float = setting(1.0, "Epochs over the pairs (DPO and IPO).")
    dpo_learning_rate: float = setting(3e-5, "DPO / IPO peak learning rate (10% warm-up, then constant).")
    dpo_batch_size: int = setting(8, "Pairs per DPO step.")
    dpo_extra: list[str] = setting([], "More DPOConfig key=value settings (DPO and IPO runs).")

    # Reward model (for ppo_rm)
    rm_epochs: float = setting(1.0, "Reward-model epochs over the pairs.")
    rm_learning_rate: float = setting(5e-5, "Reward-model peak learning rate (constant after warm-up).")
    rm_batch_size: int = setting(8, "Pairs per reward-model step.")
    rm_eval_size: int = setting(32, "Pairs held out to measure the reward model's accuracy.")
    rm_extra: list[str] = setting([], "More RMConfig key=value settings.")

    # PPO
    rl_sequences: int | None = setting(None, "Gradient sequences every run trains on (completions entering a gradient "
                                             "step, once per pass; null = one DPO run's: 2 × pairs × dpo_epochs).")
    ppo_kl_coefs: list[float] = setting([0.01, 0.03, 0.1, 0.3, 1.0], "One PPO run per KL coefficient β (each for ppo_gt "
                                                                    "and ppo_rm).")
    ppo_max_steps: int | None = setting(None, "Rollouts per PPO run (null = rl_sequences / (ppo_batch_size × "
                                              "ppo_epochs)).")
    ppo_batch_size: int = setting(16, "Prompts per rollout.")
    ppo_epochs: int = setting(2, "PPO passes over each rollout.")
    ppo_num_mini_batches: int = setting(2, "PPO minibatches per pass.")
    ppo_learning_rate: float = setting(2e-5, "PPO peak learning rate (constant after warm-up).")
    ppo_extra: list[str] = setting([], "More RLConfig key=value settings (both PPO runs).")

    # RLOO (on r*)
    rloo_kl_coefs: list[float] = setting([0.03, 0.3], "One RLOO run per KL coefficient (k1 per token, in the reward).")
    rloo_num_generations: int = setting(4, "Completions per prompt (the leave-one-out baseline is the others').")
    rloo_batch_size: int = setting(8, "Prompts per rollout.")
    rloo_learning_rate: float = setting(2e-5, "RLOO learning rate (constant after warm-up).")
    rloo_extra: list[str] = setting([], "More RLConfig key=value settings (RLOO runs).")

    # GRPO (on r*)
    grpo_betas: list[float] = setting([0.03, 0.3], "One GRPO run per β: GRPO's KL term in the loss (k3 per token, "
                                                   "averaged over the step's tokens). β = 0 has no KL term at all, so "
                                                   "every value must be > 0.")
    grpo_num_generations: int = setting(4, "Completions per prompt (a group: advantages relative to its mean, scaled "
                                           "by its standard deviation); >= 2.")
    grpo_batch_size: int = setting(8, "Prompts per optimizer step (each with grpo_num_generations completions).")
    grpo_learning_rate: float = setting(2e-5, "GRPO learning rate (constant).")
    grpo_extra: list[str] = setting([], "More GRPOConfig key=value settings (GRPO runs), e.g. loss_type=grpo.")

    # Online DPO (pairs sampled from the policy, judged by r*)
    online_dpo_betas: list[float] = setting([0.1, 0.5], "One online-DPO run per β (DPO's β; loss sigmoid).")
    online_dpo_batch_size: int = setting(8, "Prompts per optimizer step (two completions each, ranked by r*).")
    online_dpo_learning_rate: float = setting(3e-5, "Online-DPO peak learning rate (10% warm-up, then constant, as "
                                                    "offline DPO).")
    online_dpo_extra: list[str] = setting([], "More OnlineDPOConfig key=value settings (online-DPO runs).")

    # Evaluation
    points_per_run: int = setting(3, "Checkpoints evaluated per training run (evenly spaced; the last is the end).")
    eval_samples_per_prompt: int = setting(2, "Completions sampled per held-out prompt for each point.")
    best_of_n: list[int] = setting([1, 4, 16], "best-of-N reference points (N completions from π_SFT, keep the "
                                               "highest r*; KL = log N − (N − 1)/N).")
    bon_prompts: int | None = setting(None, "Held-out prompts best-of-N samples (the first ones; null = all).")
    bootstrap: int = setting(2000, "Resamples of the held-out prompts behind every verdict's standard error.")
    run_pilot: bool = setting(True, "Run the pilot (PILOT_PRESET over these settings, into <output_dir>/pilot) as the "
                                    "first stage: the report's power and cost section comes from it.")
    keep_checkpoints: bool = setting(False, "Keep every evaluated checkpoint (false: delete them once their point "
                                            "is measured; final/ is kept).")

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems[0] if len(problems) == 1 else
                              f"{len(problems)} problems in the experiment's settings:\n" +
                              "\n".join(f"  - {p}" for p in problems))

    def problems(self) -> list[str]:
        """Every problem with these settings, each naming its key (all reported at once)."""
        out = []
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                out.append(f"{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}")
        if not self.model_name_or_path:
            out.append("model_name_or_path is required")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            out.append((f"methods: unknown {unknown[0]!r}" if unknown else "methods: name at least one") +
                       f"; known: {', '.join(METHODS)}")
        for key in ("num_train_prompts", "num_eval_prompts", "prompt_min_words", "max_prompt_length",
                    "max_new_tokens", "generation_batch_size", "classifier_window_words", "sft_num_reviews",
                    "sft_max_words", "sft_epochs", "sft_learning_rate", "sft_batch_size", "samples_per_prompt",
                    "pairs_per_prompt", "bradley_terry_scale", "dpo_epochs", "dpo_learning_rate", "dpo_batch_size",
                    "rm_epochs", "rm_learning_rate", "rm_batch_size", "ppo_max_steps", "ppo_batch_size",
                    "ppo_epochs", "ppo_num_mini_batches", "ppo_learning_rate", "rloo_num_generations",
                    "rloo_batch_size", "rloo_learning_rate", "grpo_num_generations", "grpo_batch_size",
                    "grpo_learning_rate", "online_dpo_batch_size", "online_dpo_learning_rate", "points_per_run",
                    "eval_samples_per_prompt",
                    "rl_sequences", "bon_prompts", "bootstrap"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                out.append(f"{key} must be > 0, got {value}")
        if self.prompt_max_words < self.prompt_min_words:
            out.append(f"prompt_max_words ({self.prompt_max_words}) must be >= prompt_min_words "
                       f"({self.prompt_min_words})")
        if self.samples_per_prompt < 2:
            out.append("samples_per_prompt must be >= 2: a pair needs two completions of one prompt")
        if self.pair_mode == "best_vs_worst" and 2 * self.pairs_per_prompt > self.samples_per_prompt:
            out.append(f"pairs_per_prompt ({self.pairs_per_prompt}) must be <= samples_per_prompt / 2 with "
                       "best_vs_worst (disjoint pairs)")
        if self.rloo_num_generations < 2:
            out.append("rloo_num_generations must be >= 2: the leave-one-out baseline needs another sample")
        if self.grpo_num_generations < 2:
            out.append("grpo_num_generations must be >= 2: a group's advantages are relative to its other samples")
        for key in dict.fromkeys(m.sweep_key for m in TRAINED.values()):
            if any(v <= 0 for v in getattr(self, key)):
                out.append(f"{key}: every value must be > 0, got {getattr(self, key)}")
        for m in TRAINED.values():
            if m.name in self.methods and not getattr(self, m.sweep_key):
                out.append(f"methods includes {m.name} but {m.sweep_key} is empty")
        if any(n < 1 for n in self.best_of_n):
            out.append(f"best_of_n: every N must be >= 1, got {self.best_of_n}")
        if "bon" in self.methods and not self.best_of_n:
            out.append("methods includes bon but best_of_n is empty")
        if self.classifier_max_reviews is not None and self.classifier_max_reviews < 20:
            out.append(f"classifier_max_reviews must be >= 20 or null, got {self.classifier_max_reviews}")
        if self.reward != "classifier" and ":" not in self.reward:
            out.append(f"reward must be 'classifier' or 'module:function', got {self.reward!r}")
        if self.reward != "classifier":
            defaults = {f.name: f.default for f in dataclasses.fields(SentimentExperimentConfig)}
            for key in ("reward_includes_prompt", "classifier_max_reviews", "classifier_window_words"):
                if getattr(self, key) != defaults[key]:
                    out.append(f"{key} is set but reward is {self.reward!r}, not the classifier")
        if self.ppo_batch_size % self.ppo_num_mini_batches:
            out.append(f"ppo_num_mini_batches ({self.ppo_num_mini_batches}) must divide ppo_batch_size "
                       f"({self.ppo_batch_size})")
        return out


# The GPU size: closer to the paper (GPT-2 large, 25k prompts, several β / KL targets), still one GPU
# in a few hours at SmolLM2's size. Set a bigger model with model_name_or_path=<folder>.
GPU_PRESET: dict[str, Any] = {
    "output_dir": "runs/experiment_sentiment_gpu",
    "run_pilot": False,
    "methods": list(METHODS),
    "threads": None,
    "bf16": True,
    "num_train_prompts": 4096,
    "num_eval_prompts": 256,
    "max_new_tokens": 48,
    "generation_batch_size": 256,
    "sft_num_reviews": 4096,
    "sft_max_words": 64,
    "sft_batch_size": 32,
    "samples_per_prompt": 8,
    "dpo_betas": [0.05, 0.1, 0.2, 0.5, 1.0],
    "ipo_betas": [0.1, 0.5],
    "dpo_epochs": 3.0,
    "dpo_learning_rate": 5e-6,
    "dpo_batch_size": 32,
    "rm_epochs": 2.0,
    "rm_learning_rate": 1e-5,
    "rm_batch_size": 32,
    "rm_eval_size": 256,
    "ppo_kl_coefs": [0.02, 0.05, 0.1, 0.2],
    "ppo_max_steps": 200,
    "ppo_batch_size": 64,
    "ppo_epochs": 4,
    "ppo_num_mini_batches": 4,
    "ppo_learning_rate": 1e-5,
    "online_dpo_batch_size": 32,   # as offline DPO's batch and learning rate at this size
    "online_dpo_learning_rate": 5e-6,
    "points_per_run": 6,
    "eval_samples_per_prompt": 4,
    "best_of_n": [1, 2, 4, 8, 16, 64],
}


# The pilot: small enough for minutes, big enough to measure what the CPU size is chosen from — the spread
# of r* over held-out prompts and samples, and each stage's CPU seconds per unit of work. Written into
# <output_dir>/pilot/ (its own settings), where the full run's report finds it.
PILOT_PRESET: dict[str, Any] = {
    # IPO and PPO-RM cost what DPO and PPO-GT cost per sequence, GRPO and online DPO what RLOO costs (power.PROXY)
    "methods": ["dpo", "ppo_gt", "rloo", "bon"],
    "num_train_prompts": 48,
    "num_eval_prompts": 96,
    "eval_samples_per_prompt": 2,
    "sft_num_reviews": 128,
    "samples_per_prompt": 8,
    "pairs_per_prompt": 2,
    "dpo_betas": [0.1],
    "ppo_kl_coefs": [0.1],
    "rloo_kl_coefs": [0.1],
    "points_per_run": 1,
    "best_of_n": [1, 4],
    "bon_prompts": 32,
    "rl_sequences": 96,  # enough steps to price a gradient sequence; the noise needs no training
    "bootstrap": 500,
    "run_pilot": False,
}


def load_experiment_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                           *, gpu: bool = False, pilot: bool = False, **values: Any) -> SentimentExperimentConfig:
    """YAML file, then ``key=value`` overrides, then keyword values; with ``size: gpu`` (or ``gpu=True``)
    every key none of those sets comes from :data:`GPU_PRESET`, with ``size: pilot`` (``pilot=True``) from
    :data:`PILOT_PRESET`, and the output goes to ``<output_dir>/pilot``."""
    raw = read_settings(path, overrides, **values)
    if gpu and pilot:
        raise ConfigError("--gpu and --pilot: choose one (the pilot is sized for the CPU)")
    for flag, size in ((gpu, "gpu"), (pilot, "pilot")):
        if flag:
            if raw.get("size", size) != size:
                raise ConfigError(f"--{size} given but the config says size: {raw['size']}")
            raw["size"] = size
    if raw.get("size") == "gpu":
        raw = {**GPU_PRESET, **raw}
    elif raw.get("size") == "pilot":
        base = raw.get("output_dir", SentimentExperimentConfig.__dataclass_fields__["output_dir"].default)
        raw = {**PILOT_PRESET, **raw, "output_dir": str(Path(base) / "pilot")}
    return from_dict(SentimentExperimentConfig, raw)


def pilot_of(cfg: SentimentExperimentConfig) -> SentimentExperimentConfig:
    """The pilot of a run: its settings with :data:`PILOT_PRESET` over them, into ``<output_dir>/pilot``."""
    return from_dict(SentimentExperimentConfig, {**to_dict(cfg), **PILOT_PRESET, "size": "pilot",
                                                 "output_dir": str(Path(cfg.output_dir) / "pilot")})
