"""Typed, frozen configuration per stage: YAML file + ``key=value`` overrides, validated when built.

Key names follow TRL's ``DPOConfig`` / ``TrainingArguments`` where the concept is the same
(beta, label_smoothing, max_length, learning_rate, per_device_train_batch_size, ...), so a TRL user's
settings carry over. Unknown keys, wrong types and out-of-range values are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from preftune.errors import ConfigError

C = TypeVar("C")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A config field: its default and the one-line meaning ``--help`` prints."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainingConfig:
    """Settings every training stage shares."""

    model_name_or_path: str = _f("", "Hugging Face folder of the model to train, or 'smollm2' for the "
                                     "embedded SmolLM2-135M-Instruct. Required.")
    train_file: str = _f("", "Training data: .jsonl/.json/.csv/.parquet file or a `datasets` folder. Required "
                                 "unless data is passed from Python.")
    eval_file: str | None = _f(None, "Held-out data in the same format; never used for a training step.")
    eval_size: int = _f(0, "If no eval_file: hold out this many training examples (seeded) for evaluation.")
    output_dir: str = _f("runs/run", "Folder for checkpoints, metrics.jsonl and TensorBoard events.")
    max_length: int | None = _f(512, "Max tokens of prompt + completion; completions are cut from the right.")
    max_prompt_length: int | None = _f(256, "Max prompt tokens; longer prompts are cut from the left.")
    use_chat_template: bool | None = _f(None, "Render with the tokenizer's chat template (null = when it has one).")
    learning_rate: float = _f(1e-6, "Peak learning rate.")
    optimizer: str = _f("adamw", "adamw or rmsprop (the DPO paper used RMSprop).", choices=("adamw", "rmsprop"))
    weight_decay: float = _f(0.0, "Decoupled weight decay (AdamW) / L2 (RMSprop).")
    adam_beta1: float = _f(0.9, "AdamW β1.")
    adam_beta2: float = _f(0.999, "AdamW β2.")
    adam_epsilon: float = _f(1e-8, "AdamW / RMSprop ε.")
    lr_scheduler_type: str = _f("linear", "linear (warm-up then linear decay to 0) or constant (after warm-up).",
                                choices=("linear", "constant"))
    warmup_steps: int = _f(0, "Linear warm-up steps (the DPO paper: 150).")
    warmup_ratio: float = _f(0.0, "Warm-up as a fraction of total steps (used when warmup_steps is 0).")
    per_device_train_batch_size: int = _f(8, "Examples per process per micro-step.")
    per_device_eval_batch_size: int = _f(8, "Examples per process per evaluation batch.")
    gradient_accumulation_steps: int = _f(1, "Micro-steps per optimizer step.")
    num_train_epochs: float = _f(1.0, "Passes over the training data (fractional allowed).")
    max_steps: int = _f(-1, "If > 0, stop after this many optimizer steps (overrides num_train_epochs).")
    max_grad_norm: float = _f(10.0, "Clip the global gradient norm to this (0 = no clipping); the "
                                    "pre-clip norm is logged as grad_norm. DPO's reference code uses 10.")
    bf16: bool = _f(False, "bf16 autocast for forward/backward (weights and optimizer stay fp32).")
    gradient_checkpointing: bool = _f(False, "Recompute decoder activations in backward to save memory.")
    fsdp: bool = _f(False, "Under torchrun, shard weights, gradients and optimizer state across processes (FSDP2, "
                           "one unit per decoder layer); checkpoints are sharded (torch.distributed.checkpoint) "
                           "and resume under any process count. sft and dpo stages, full fine-tuning.")
    lean_activations: bool = _f(True, "RMSNorm, SwiGLU MLPs and (on CPU) grouped-query attention through "
                                      "functions that keep fewer activations for backward (same math; modules "
                                      "with another formula keep their own forward): SmolLM2 saves 40 % less.")
    torch_compile: bool = _f(False, "torch.compile each decoder layer (dynamic shapes; the first steps pay the "
                                    "compile time). sft and dpo stages.")
    seed: int = _f(42, "Seed for data order, initialisation and dropout.")
    group_by_length: bool = _f(False, "Batch examples of similar length together (windows of 16 global batches "
                                      "sorted by length, batches shuffled): less padding, faster steps.")
    threads: int | None = _f(None, "torch.set_num_threads; on 2 cores 1 thread is often faster (null = torch's default).")
    device: str = _f("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))
    logging_steps: int = _f(1, "Log train metrics every N optimizer steps (each log is one host sync).")
    eval_steps: int | None = _f(None, "Evaluate on the held-out set every N steps (null = only at start and end).")
    save_steps: int | None = _f(None, "Save a resumable checkpoint every N steps (null = only at the end).")
    save_total_limit: int | None = _f(2, "Keep only the newest N step checkpoints (null = keep all).")
    resume: str | None = _f(None, "Resume from a checkpoint folder, or 'latest' in output_dir (the newest "
                                  "checkpoint whose manifest verifies; a corrupt one is reported and skipped).")
    force_resume: bool = _f(False, "Resume even though the seed, data, tokenizer, model config or a training "
                                   "setting differs from the checkpoint's (each difference is still printed).")
    max_consecutive_skips: int = _f(5, "Stop the run after this many optimizer steps in a row with a non-finite "
                                       "loss or gradient (each is skipped; 0 = never stop).")
    report_to: str = _f("auto", "auto (TensorBoard when installed), tensorboard or none.",
                        choices=("auto", "tensorboard", "none"))
    logprob_chunk_size: int = _f(512, "Completion tokens per output-layer chunk: bounds the live logits.")
    padding_free: bool = _f(True, "Pack each batch's sequences end to end (positions restart per sequence) "
                                  "instead of computing on padding; checked against padded rows on first use.")
    use_peft: bool = _f(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA α (scale = α / r).")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_target_modules: list[str] = _f(["all-linear"], "Modules LoRA wraps (peft names; 'all-linear').")
    progress_bar: bool = _f(True, "Show a live progress bar (rank 0).")

    def __post_init__(self) -> None:
        _validate_choices(self)
        _require(self.model_name_or_path, "model_name_or_path", "is required")
        _positive(self, "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                  "gradient_accumulation_steps", "num_train_epochs", "logging_steps", "logprob_chunk_size",
                  "lora_r", "lora_alpha", "adam_epsilon")
        _non_negative(self, "weight_decay", "warmup_steps", "max_grad_norm", "eval_size",
                      "max_consecutive_skips")
        _positive_or_null(self, "eval_steps", "save_steps", "save_total_limit", "threads")
        _check_lengths(self)
        _in_range(self, "warmup_ratio", "[0, 1]")
        _in_range(self, "adam_beta1", "[0, 1)")
        _in_range(self, "adam_beta2", "[0, 1)")
        _in_range(self, "lora_dropout", "[0, 1)")
        if self.max_steps != -1 and self.max_steps <= 0:
            raise ConfigError(f"max_steps must be -1 (no limit) or > 0, got {self.max_steps}")
        if self.fsdp and self.use_peft:
            raise ConfigError("fsdp must be false with use_peft: sharding is for full fine-tuning (LoRA adapters "
                              "are small enough to replicate; use plain torchrun data parallelism)")
        if not self.use_peft:
            defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig) if f.name.startswith("lora_")}
            changed = [k for k, v in defaults.items()
                       if v is not dataclasses.MISSING and getattr(self, k) != v]
            if changed:
                raise ConfigError(f"{changed[0]} is set but use_peft is false, so it would be ignored")


@dataclass(frozen=True)
class LossConfig:
    """The preference loss(es) and their hyperparameters; names and defaults as in TRL's DPOConfig."""

    beta: float = _f(0.1, "β: strength of the KL constraint to the reference (the DPO paper: 0.1).")
    loss_type: list[str] = _f(["sigmoid"], "Loss name(s) from preftune.losses (sigmoid = DPO, ipo, hinge, robust, "
                                           "simpo, orpo, ...); a list is summed with loss_weights. kto trains from "
                                           "unpaired {prompt, completion, label} data, plackett_luce from "
                                           "{prompt, completions: [best, ..., worst]} rankings; both alone.")
    loss_weights: list[float] | None = _f(None, "One weight per loss_type entry (null = all 1).")
    label_smoothing: float = _f(0.0, "cDPO / robust / exo_pair: assumed probability a label is flipped, in [0, 0.5).")
    f_divergence_type: str = _f("reverse_kl", "Divergence that forms the log-ratio (f-DPO): reverse_kl, forward_kl, "
                                              "js_divergence or alpha_divergence.",
                                choices=("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"))
    f_alpha_divergence_coef: float = _f(0.5, "α of alpha_divergence.")
    discopop_tau: float = _f(0.05, "τ of the discopop loss.")
    bco_delta: float = _f(0.0, "Reward shift δ of bco_pair.")
    simpo_gamma: float = _f(0.5, "Target margin γ of simpo.")
    orpo_alpha: float = _f(0.1, "Weight λ of the odds-ratio term in orpo.")
    desirable_weight: float = _f(1.0, "kto: λ_D, weight of desirable examples (the paper: keep λ_D·n_D / "
                                      "(λ_U·n_U) in [1, 4/3]).")
    undesirable_weight: float = _f(1.0, "kto: λ_U, weight of undesirable examples.")

    def validate_losses(self) -> None:
        from preftune import losses

        _positive(self, "beta")
        _in_range(self, "label_smoothing", "[0, 0.5)")
        if not self.loss_type:
            raise ConfigError("loss_type must name at least one loss")
        for name in self.loss_type:
            if name not in losses.all_names():
                raise ConfigError(f"loss_type: unknown loss {name!r}; known: {', '.join(losses.all_names())}")
        kinds = {losses.kind(n) for n in self.loss_type}
        if kinds != {"pairwise"} and len(self.loss_type) > 1:
            raise ConfigError(f"loss_type {self.loss_type}: kto and plackett_luce train from their own data "
                              "layouts (unpaired labels, rankings), so they cannot be combined with other losses")
        _positive(self, "desirable_weight", "undesirable_weight", "discopop_tau")
        _non_negative(self, "simpo_gamma", "orpo_alpha")
        for i, weight in enumerate(self.loss_weights or ()):
            if weight < 0:
                raise ConfigError(f"loss_weights[{i}] must be >= 0, got {weight}")
        if self.loss_weights and not sum(self.loss_weights) > 0:
            raise ConfigError(f"loss_weights must have a sum > 0, got {self.loss_weights}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError(f"loss_weights has {len(self.loss_weights)} entries but loss_type has "
                              f"{len(self.loss_type)}")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ConfigError("loss_type exo_pair needs label_smoothing > 0 (its ε; e.g. 1e-3)")
        used = set().union(*(losses.hyperparameters(n) for n in self.loss_type))
        for f in dataclasses.fields(LossConfig):
            if f.name in ("beta", "loss_type", "loss_weights") or f.name in used:
                continue
            if getattr(self, f.name) != f.default:
                raise ConfigError(f"{f.name} is set but none of loss_type {self.loss_type} uses it")


@dataclass(frozen=True)
class SFTConfig(TrainingConfig):
    """Supervised fine-tuning: completion-only negative log-likelihood."""

    output_dir: str = _f("runs/sft", "Folder for checkpoints, metrics.jsonl and TensorBoard events.")
    learning_rate: float = _f(1e-5, "Peak learning rate.")
    completion_field: str = _f("completion", "Field holding the completion (e.g. 'chosen' to SFT on the "
                                             "preferred answers of a preference file, as the DPO paper does).")


@dataclass(frozen=True)
class DPOConfig(TrainingConfig, LossConfig):
    """Direct Preference Optimization and its family."""

    output_dir: str = _f("runs/dpo", "Folder for checkpoints, metrics.jsonl and TensorBoard events.")
    ref_model_name_or_path: str | None = _f(None, "Reference model π_ref (null = the starting policy, "
                                                  "e.g. your SFT model).")
    precompute_ref_log_probs: bool = _f(True, "Compute reference log-probs once before training and cache them "
                                              "on disk; false = run the reference every step.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_losses()


@dataclass(frozen=True)
class EvalConfig(LossConfig):
    """Held-out preference evaluation of a policy against a reference."""

    model_name_or_path: str = _f("", "Policy to evaluate (Hugging Face folder or 'smollm2'). Required.")
    ref_model_name_or_path: str = _f("", "Reference π_ref the policy was trained against. Required.")
    eval_file: str = _f("", "Preference data to evaluate on. Required.")
    max_length: int | None = _f(512, "As in training.")
    max_prompt_length: int | None = _f(256, "As in training.")
    use_chat_template: bool | None = _f(None, "As in training.")
    per_device_eval_batch_size: int = _f(8, "Examples per evaluation batch.")
    bf16: bool = _f(False, "bf16 autocast.")
    threads: int | None = _f(None, "torch.set_num_threads.")
    device: str = _f("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))
    logprob_chunk_size: int = _f(512, "Completion tokens per output-layer chunk.")
    padding_free: bool = _f(True, "As in training.")
    output_file: str | None = _f(None, "Write the metrics as JSON here too.")
    seed: int = _f(42, "kto only: seed of the fixed KL partners (use the training run's seed).")

    def __post_init__(self) -> None:
        _validate_choices(self)
        _require(self.model_name_or_path, "model_name_or_path", "is required")
        _require(self.eval_file, "eval_file", "is required")
        _require(self.ref_model_name_or_path, "ref_model_name_or_path", "is required")
        self.validate_losses()
        _positive(self, "per_device_eval_batch_size", "logprob_chunk_size")
        _positive_or_null(self, "threads")
        _check_lengths(self)
        if self.seed != 42 and self.loss_type != ["kto"]:
            raise ConfigError("seed is set but only loss_type kto uses it (for its KL partners)")


@dataclass(frozen=True)
class RMConfig(TrainingConfig):
    """Reward model: the language model with a scalar head, trained on preferences (SPEC §3)."""

    output_dir: str = _f("runs/rm", "Folder for checkpoints, metrics.jsonl and TensorBoard events.")
    learning_rate: float = _f(1e-5, "Peak learning rate.")
    loss_type: str = _f("bradley_terry", "bradley_terry on {prompt, chosen, rejected} pairs, or plackett_luce on "
                                         "{prompt, completions: [best, ..., worst]} rankings.",
                        choices=("bradley_terry", "plackett_luce"))
    margin: float = _f(0.0, "bradley_terry: the chosen reward must win by this margin (Llama 2's margin loss).")
    center_rewards_coefficient: float | None = _f(None, "Adds c·(r_chosen + r_rejected)² so rewards stay centred "
                                                        "at 0 (Eisenstein et al. 2023; TRL's name); null = off.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fsdp:
            raise ConfigError("fsdp must be false: the rm stage shards nothing yet (sft and dpo do)")
        if self.torch_compile:
            raise ConfigError("torch_compile must be false: the rm stage does not compile (sft and dpo do)")
        if self.logprob_chunk_size != TrainingConfig.logprob_chunk_size:
            raise ConfigError("logprob_chunk_size is set but the rm stage computes no token log-probs (its head "
                              "reads one hidden state per sequence), so it would be ignored")
        if self.loss_type == "plackett_luce" and (self.margin != 0.0 or self.center_rewards_coefficient is not None):
            raise ConfigError("margin and center_rewards_coefficient apply to bradley_terry only")
        _non_negative(self, "margin")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ConfigError(f"center_rewards_coefficient must be >= 0 or null, got {self.center_rewards_coefficient}")


@dataclass(frozen=True)
class RLConfig(TrainingConfig):
    """Online KL-regularised RL (SPEC §1, §3): sample, score, penalise KL to π_ref, update (PPO/RLOO/REINFORCE)."""

    algorithm: str = _f("ppo", "ppo (clipped surrogate + value head + GAE), rloo (leave-one-out baseline over "
                               "num_generations samples per prompt) or reinforce (batch-mean baseline).",
                        choices=("ppo", "rloo", "reinforce"))
    output_dir: str = _f("runs/rl", "Folder for checkpoints, metrics.jsonl and TensorBoard events.")
    learning_rate: float = _f(1e-6, "Peak learning rate.")
    reward: str = _f("", "Reward: a reward-model folder (from `preftune rm`) or a Python callable "
                         "'module:function' taking (prompts, completions) and returning floats. Required.")
    ref_model_name_or_path: str | None = _f(None, "Reference π_ref of the KL penalty (null = the starting policy).")
    per_device_train_batch_size: int = _f(8, "Prompts per process per rollout.")
    num_generations: int = _f(1, "Completions sampled per prompt (rloo needs >= 2; the baseline is the others').")
    max_new_tokens: int = _f(48, "Most tokens generated per completion (generation stops at EOS).")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_p: float = _f(1.0, "Nucleus sampling mass (1 = off). Below 1 the samples come from a truncated "
                           "distribution while the log-probs are the full tempered softmax's: slightly off-policy.")
    kl_coef: float = _f(0.05, "β of the KL penalty (initial value when adaptive_kl).")
    kl_estimator: str = _f("k1", "Per-token KL estimator in the reward: k1 = log π/π_ref (the one whose gradient "
                                 "is right), k3 = (r − 1) − log r, r = π_ref/π: an unbiased, never-negative "
                                 "estimate of the KL's value but, used as a reward, a biased gradient: in "
                                 "`preftune theory` PPO with k3 settles 0.6 nats from π*.", choices=("k1", "k3"))
    adaptive_kl: bool = _f(False, "Adapt β so the measured KL tracks kl_target (Ziegler et al. 2019).")
    kl_target: float = _f(6.0, "adaptive_kl: target KL per completion, in nats.")
    kl_horizon: int = _f(10000, "adaptive_kl: horizon (in samples) of the proportional controller.")
    ppo_epochs: int = _f(4, "ppo: passes over each rollout batch.")
    num_mini_batches: int = _f(1, "ppo: minibatches per pass (each one optimizer step).")
    clip_range: float = _f(0.2, "ppo: ε of the clipped probability ratio.")
    clip_range_value: float | None = _f(0.2, "ppo: clip value predictions to old ± this (null = no value clipping).")
    vf_coef: float = _f(0.1, "ppo: weight of the value loss (the value head shares the policy's trunk).")
    gamma: float = _f(1.0, "ppo: discount.")
    lam: float = _f(0.95, "ppo: GAE λ.")
    whiten_advantages: bool = _f(True, "Normalise advantages to zero mean, unit variance per rollout batch.")
    missing_eos_penalty: float | None = _f(None, "Subtract this from the score of completions that hit "
                                                 "max_new_tokens without EOS (null = off).")
    reward_batch_size: int = _f(32, "Completions per reward-model call.")
    max_steps: int = _f(-1, "If > 0, stop after this many rollouts (each: sample, score, then ppo_epochs × "
                            "num_mini_batches optimizer steps for ppo, one for rloo / reinforce).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fsdp:
            raise ConfigError("fsdp must be false: the ppo/rloo/reinforce stage shards nothing yet (sft and dpo do)")
        if self.torch_compile:
            raise ConfigError("torch_compile must be false: sampling would recompile for every generated length "
                              "(sft and dpo compile)")
        if self.gradient_accumulation_steps != 1:
            raise ConfigError("gradient_accumulation_steps must be 1 for RL: a rollout is one batch of prompts "
                              "(per_device_train_batch_size); ppo splits it with num_mini_batches")
        _require(self.reward, "reward", "is required: a reward-model folder or 'module:function'")
        _positive(self, "num_generations", "max_new_tokens", "temperature", "kl_horizon", "ppo_epochs",
                  "num_mini_batches", "kl_target", "reward_batch_size")
        _positive(self, "clip_range")  # as preftune.rl.surrogate requires: ε = 0 pins every ratio to 1
        _positive_or_null(self, "clip_range_value")
        _non_negative(self, "kl_coef", "vf_coef")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            # A negative penalty would reward rambling to max_new_tokens.
            raise ConfigError(f"missing_eos_penalty must be >= 0 or null, got {self.missing_eos_penalty}")
        _in_range(self, "top_p", "(0, 1]")
        _in_range(self, "gamma", "[0, 1]")
        _in_range(self, "lam", "[0, 1]")
        if self.algorithm == "rloo" and self.num_generations < 2:
            raise ConfigError("algorithm rloo needs num_generations >= 2 (the baseline is the other samples' mean)")
        rollout = self.per_device_train_batch_size * self.num_generations
        if self.algorithm == "ppo" and rollout % self.num_mini_batches:
            raise ConfigError(f"num_mini_batches ({self.num_mini_batches}) must divide the rollout batch "
                              f"(per_device_train_batch_size × num_generations = {rollout})")
        defaults = {f.name: f.default for f in dataclasses.fields(RLConfig)}
        ppo_only = ("ppo_epochs", "num_mini_batches", "clip_range", "clip_range_value", "vf_coef", "gamma", "lam")
        if self.algorithm != "ppo":
            changed = [k for k in ppo_only if getattr(self, k) != defaults[k]]
            if changed:
                raise ConfigError(f"{changed[0]} is set but only algorithm ppo uses it")
        if not self.adaptive_kl:
            for key in ("kl_target", "kl_horizon"):
                if getattr(self, key) != defaults[key]:
                    raise ConfigError(f"{key} is set but adaptive_kl is false, so it would be ignored")


# ----------------------------------------------------------------------------------------------------
# Building a config from YAML + overrides


def load_config(cls: type[C], path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                **values: Any) -> C:
    """Build ``cls`` from a YAML file, then ``key=value`` overrides, then keyword values (in that order).

    Values from the command line are parsed as YAML scalars (``beta=0.2``, ``bf16=true``,
    ``loss_type=[sigmoid,ipo]``), then checked against the field's type.
    """
    return from_dict(cls, read_settings(path, overrides, **values))


def read_settings(path: str | Path | None = None, overrides: typing.Sequence[str] = (), **values: Any
                  ) -> dict[str, Any]:
    """The raw key → value mapping of a YAML file, then ``key=value`` overrides, then keyword values."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of key: value")
        raw.update(loaded)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value")
        try:
            raw[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from None
    raw.update(values)
    return raw


def from_dict(cls: type[C], raw: dict[str, Any]) -> C:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(key, fields, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ConfigError(f"unknown config key {key!r} for {cls.__name__}{hint}; "
                          f"`preftune <stage> --help` lists every key")
    hints = typing.get_type_hints(cls)
    coerced = {k: _coerce(k, v, hints[k]) for k, v in raw.items()}
    return cls(**coerced)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def describe(cls: type) -> str:
    """Every key with its type, default and meaning: the body of ``preftune <stage> --help``."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "(required)" if default == "" else yaml.safe_dump(default, default_flow_style=True).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}) = {shown}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, list) else [value]  # a single loss name is a one-item list
        return [_coerce(key, v, item_tp) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 1e-6 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(number):
            # nan slips through every `<= 0` range check, and inf is no setting of any key.
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _validate_choices(config: Any) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(config, f.name)!r}")


def _require(value: Any, key: str, why: str) -> None:
    if not value:
        raise ConfigError(f"{key} {why}")


# Every range error reads "<key> must be <allowed range>, got <value>".


def _positive(config: Any, *keys: str) -> None:
    for key in keys:
        if getattr(config, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(config, key)}")


def _non_negative(config: Any, *keys: str) -> None:
    for key in keys:
        if getattr(config, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(config, key)}")


def _positive_or_null(config: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(config, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be > 0 or null, got {value}")


def _in_range(config: Any, key: str, interval: str) -> None:
    """``interval`` in the usual notation, e.g. ``"[0, 1)"``: it is both the check and the message."""
    value = getattr(config, key)
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    if not (above and below):
        raise ConfigError(f"{key} must be in {interval}, got {value}")


def _check_lengths(config: Any) -> None:
    """max_length / max_prompt_length: the same rules as the data pipeline's DataSettings."""
    max_length, max_prompt_length = config.max_length, config.max_prompt_length
    if max_length is not None and max_length < 2:
        raise ConfigError(f"max_length must be >= 2 or null (a prompt and a completion token), got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ConfigError(f"max_prompt_length must be >= 1 or null, got {max_prompt_length}")
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise ConfigError(f"max_prompt_length must be < max_length ({max_length}) so every completion keeps "
                          f"at least one token, got {max_prompt_length}")
