"""Each stage's config: the groups it is composed of, its defaults, and its checks across groups.

A stage takes exactly the keys it uses. A key it leaves out on purpose is listed with the reason, so a
user who sets it learns why instead of seeing "unknown key".
"""

from __future__ import annotations

from dataclasses import dataclass

from preftune.config.compose import compose
from preftune.config.fields import Problems, changed, setting
from preftune.config.groups import (
    DataGroup,
    DeviceGroup,
    LogprobGroup,
    ModelGroup,
    PeftGroup,
    PreferenceColumnsGroup,
    ShardingGroup,
    TextGroup,
    TrainModelGroup,
)
from preftune.config.loss import LossGroup
from preftune.config.optim import OptimGroup
from preftune.config.rl import GRPOGroup, OnlineDPOGroup, PromptGroup, RewardGroup, RLGroup, SamplingGroup
from preftune.config.run import HubGroup, RunGroup

# The groups every training stage is made of.
TRAINING = (RunGroup, DeviceGroup, ModelGroup, TrainModelGroup, PeftGroup, TextGroup, DataGroup, OptimGroup,
            HubGroup)


def _no_fsdp_with_peft(cfg, p: Problems) -> None:
    if cfg.fsdp and cfg.use_peft:
        p.add("fsdp must be false with use_peft: sharding is for full fine-tuning (LoRA adapters are small enough "
              "to replicate; use plain torchrun data parallelism)")
    if cfg.fsdp and cfg.save_only_model:
        p.add("save_only_model must be false with fsdp: a sharded checkpoint holds model and optimizer together")
    if cfg.fsdp and cfg.fp32_master_weights:
        p.add("fp32_master_weights must be false with fsdp (sharded checkpoints save a plain optimizer)")


TrainingConfig = compose(
    "TrainingConfig", "Settings every training stage shares (the sft stage's keys without completion_field).",
    *TRAINING, LogprobGroup, ShardingGroup, check=_no_fsdp_with_peft)


@dataclass(frozen=True)
class SFTGroup:
    """Supervised fine-tuning."""

    completion_field: str = setting("completion", "Field holding the completion (e.g. 'chosen' to SFT on the "
                                                  "preferred answers of a preference file, as the DPO paper does).")


SFTConfig = compose(
    "SFTConfig", "Supervised fine-tuning: completion-only negative log-likelihood.",
    *TRAINING, LogprobGroup, ShardingGroup, SFTGroup,
    defaults={"output_dir": "runs/sft", "learning_rate": 2e-5}, check=_no_fsdp_with_peft,
    without={"beta": "sft has no reference model and no β (it is plain negative log-likelihood)"})


@dataclass(frozen=True)
class ReferenceGroup:
    """The reference model π_ref."""

    ref_model_name_or_path: str | None = setting(None, "Reference model π_ref (null = the starting policy, e.g. "
                                                       "your SFT model).")
    precompute_ref_log_probs: bool | None = setting(None, "Compute reference log-probs once before training and "
                                                          "cache them on disk; false = run the reference every "
                                                          "step (the same numbers; TRL's default). null = true, "
                                                          "except with sync_ref_model (the reference moves).")
    precompute_ref_batch_size: int | None = setting(None, "Batch size of that pass (null = "
                                                          "per_device_train_batch_size for the training data, "
                                                          "per_device_eval_batch_size for the held-out data).")
    sync_ref_model: bool = setting(False, "TR-DPO: every ref_model_sync_steps steps move the (live, frozen) "
                                          "reference towards the policy: θ_ref ← α θ + (1 − α) θ_ref. Needs "
                                          "precompute_ref_log_probs=false; not with use_peft or fsdp.")
    ref_model_mixup_alpha: float = setting(0.6, "TR-DPO: α of the reference update, in [0, 1].")
    ref_model_sync_steps: int = setting(512, "TR-DPO: optimizer steps between reference updates.")

    def check(self, p: Problems) -> None:
        if self.precompute_ref_log_probs is None:  # resolved when built: the run and its config.json say which
            object.__setattr__(self, "precompute_ref_log_probs", not self.sync_ref_model)
        p.positive_or_null(self, "precompute_ref_batch_size")
        p.in_range(self, "ref_model_mixup_alpha", "[0, 1]")
        p.positive(self, "ref_model_sync_steps")
        if not self.sync_ref_model:
            for key in changed(self, "ref_model_mixup_alpha", "ref_model_sync_steps"):
                p.add(f"{key} is set but sync_ref_model is false, so it would be ignored", key)


def _dpo_check(cfg, p: Problems) -> None:
    from preftune import losses

    _no_fsdp_with_peft(cfg, p)
    if not cfg.sync_ref_model:
        return
    if cfg.precompute_ref_log_probs:
        p.add("sync_ref_model needs precompute_ref_log_probs=false: the reference changes during training, so "
              "log-probs computed once before it would be stale (TRL refuses this too)")
    if cfg.use_peft:
        p.add("sync_ref_model cannot be used with use_peft: the reference is the policy with its adapter disabled, "
              "there is no separate reference model to update (as in TRL)")
    if cfg.fsdp:
        p.add("sync_ref_model cannot be used with fsdp yet: the reference update is not sharded")
    if isinstance(cfg.loss_type, list) and cfg.loss_type and set(cfg.loss_type) <= losses.REFERENCE_FREE:
        p.add(f"sync_ref_model is set but none of loss_type {cfg.loss_type} reads the reference")


DPOConfig = compose(
    "DPOConfig", "Direct Preference Optimization and its family.",
    *TRAINING, PreferenceColumnsGroup, LogprobGroup, ShardingGroup, ReferenceGroup, LossGroup,
    defaults={"output_dir": "runs/dpo"}, check=_dpo_check)


@dataclass(frozen=True)
class RewardModelGroup:
    """The reward model's loss."""

    loss_type: str = setting("bradley_terry", "bradley_terry on {prompt, chosen, rejected} pairs, or plackett_luce "
                                              "on {prompt, completions: [best, ..., worst]} rankings.",
                             choices=("bradley_terry", "plackett_luce"))
    margin: float = setting(0.0, "bradley_terry: the chosen reward must win by this margin (Llama 2's margin loss).")
    center_rewards_coefficient: float | None = setting(None, "Adds c·(r_chosen + r_rejected)² so rewards stay "
                                                             "centred at 0 (Eisenstein et al. 2023; TRL's name); "
                                                             "null = off.")

    def check(self, p: Problems) -> None:
        p.non_negative(self, "margin")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            p.add(f"center_rewards_coefficient must be >= 0 or null, got {self.center_rewards_coefficient}",
                  "center_rewards_coefficient")
        elif self.loss_type == "plackett_luce" and (self.margin != 0.0 or self.center_rewards_coefficient is not None):
            p.add("margin and center_rewards_coefficient apply to bradley_terry only")


RMConfig = compose(
    "RMConfig", "Reward model: the language model with a scalar head, trained on preferences.",
    *TRAINING, PreferenceColumnsGroup, RewardModelGroup,
    defaults={"output_dir": "runs/rm", "learning_rate": 1e-4},
    without={"logprob_chunk_size": "the rm stage computes no token log-probs (its head reads one hidden state per "
                                   "sequence)",
             "load_in_4bit": "the rm stage's LoRA does not prepare 4-bit weights for training yet (sft and dpo do)",
             **{key: "the rm stage's LoRA trains the head in full and takes lora_r, lora_alpha, lora_dropout and "
                     "lora_target_modules only" for key in ("lora_modules_to_save", "use_rslora", "use_dora")},
             "fsdp": "the rm stage shards nothing yet (sft and dpo do)",
             "torch_compile": "the rm stage does not compile (sft and dpo do)"})


# Online stages: prompts instead of text pairs, a sampler and rewards; the same loop, optimizer and run.
ONLINE = (RunGroup, DeviceGroup, ModelGroup, TrainModelGroup, PeftGroup, PromptGroup, DataGroup, OptimGroup,
          HubGroup, LogprobGroup, ShardingGroup, SamplingGroup, RewardGroup)
ONLINE_WITHOUT = {
    "torch_compile": "sampling would recompile for every generated length (sft and dpo compile)",
    "group_by_length": "online stages batch sampled completions, whose lengths are not known in advance",
    "max_length": "online stages bound completions with their own key (max_new_tokens / max_completion_length) "
                  "and prompts with max_prompt_length",
    "use_vllm": "no vLLM backend: generation is Hugging Face generate with the KV cache; a server backend plugs "
                "in through the sampler interface (preftune/modeling/generation.py)",
    "vllm_mode": "no vLLM backend (see use_vllm)",
    "generation_kwargs": "the sampling keys (temperature, top_p, top_k, min_p, repetition_penalty) are the "
                         "supported ones: samples must stay a function of the seed and the row alone",
    "remove_unused_columns": "every column of the prompt data always reaches the reward functions",
    "shuffle_dataset": "prompts are always shuffled, as a function of (seed, epoch)",
    "cast_lm_head_to_fp32": "token log-probs are always computed in float32 (preftune/modeling/logprobs.py)",
}


def _rl_check(cfg, p: Problems) -> None:
    rows = cfg.per_device_train_batch_size * cfg.num_generations
    if cfg.algorithm == "ppo" and cfg.num_mini_batches > 0 and rows % cfg.num_mini_batches:
        p.add(f"num_mini_batches ({cfg.num_mini_batches}) must divide the completions of a micro-batch "
              f"(per_device_train_batch_size × num_generations = {rows})")
    if cfg.algorithm == "ppo" and cfg.fsdp:
        p.add("fsdp must be false for algorithm ppo: its value head is not sharded yet (rloo, reinforce and grpo "
              "shard)")
    _no_fsdp_with_peft(cfg, p)


RLConfig = compose(
    "RLConfig", "Online KL-regularised RL: sample, score, penalise KL to π_ref, update (PPO/RLOO/REINFORCE).",
    *ONLINE, RLGroup,
    defaults={"output_dir": "runs/rl", "learning_rate": 1e-6, "disable_dropout": False},
    helps={"per_device_train_batch_size": "Prompts per process per micro-batch: a rollout holds "
                                          "per_device_train_batch_size × gradient_accumulation_steps prompts per "
                                          "process.",
           "max_steps": "If > 0, stop after this many optimizer steps (ppo takes ppo_epochs × num_mini_batches of "
                        "them per rollout, rloo and reinforce one)."},
    without=ONLINE_WITHOUT, check=_rl_check)


def generations_per_process(cfg) -> int:
    """Micro-batches per generation (TRL's steps_per_generation), from generation_batch_size if given."""
    import os

    if cfg.generation_batch_size is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return max(1, cfg.generation_batch_size // (cfg.per_device_train_batch_size * world))
    return cfg.steps_per_generation or cfg.gradient_accumulation_steps


def _grpo_check(cfg, p: Problems) -> None:
    import os

    _no_fsdp_with_peft(cfg, p)
    if cfg.per_device_train_batch_size <= 0 or cfg.num_generations < 2:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.generation_batch_size is not None and cfg.generation_batch_size % (cfg.per_device_train_batch_size * world):
        p.add(f"generation_batch_size ({cfg.generation_batch_size}) must be a multiple of per_device_train_batch_size "
              f"× processes ({cfg.per_device_train_batch_size * world})", "generation_batch_size")
        return
    rows = cfg.per_device_train_batch_size * generations_per_process(cfg)
    if rows % cfg.num_generations:
        p.add(f"a process's generation batch (per_device_train_batch_size × steps_per_generation = {rows} "
              f"completions) must hold whole groups of num_generations ({cfg.num_generations}): each process "
              f"samples and normalises its own prompts' groups", "num_generations")


GRPOConfig = compose(
    "GRPOConfig", "GRPO and its family: group-relative advantages, clipped ratio, loss_type picks the variant.",
    *ONLINE, GRPOGroup,
    defaults={"output_dir": "runs/grpo", "learning_rate": 1e-6, "max_prompt_length": None, "disable_dropout": False},
    helps={"per_device_train_batch_size": "Completions per process per micro-batch (TRL's meaning); a generation "
                                          "samples per_device_train_batch_size × steps_per_generation of them, "
                                          "num_generations per prompt.",
           "max_steps": "If > 0, stop after this many optimizer steps."},
    without={**ONLINE_WITHOUT,
             "max_new_tokens": "grpo calls it max_completion_length (TRL's name)",
             "top_entropy_quantile": "not implemented: every completion token is in the loss",
             "entropy_coef": "not implemented: no entropy bonus (the logged entropy is a sample estimate)",
             "off_policy_mask_threshold": "not implemented for grpo yet (preftune.rl.off_policy_sequence_mask "
                                          "has the math)",
             "vllm_importance_sampling_correction": "no vLLM backend (see use_vllm); the HF sampler is the "
                                                    "trainer's own policy",
             "sync_ref_model": "not implemented for grpo: π_ref stays the starting policy"},
    check=_grpo_check)


def _online_dpo_check(cfg, p: Problems) -> None:
    _no_fsdp_with_peft(cfg, p)
    from preftune import losses

    if cfg.loss_type and any(n in losses.all_names() and losses.kind(n) != "pairwise" for n in cfg.loss_type):
        p.add(f"loss_type {cfg.loss_type}: online DPO ranks two completions per prompt, so it trains pairwise "
              "losses only (not kto or plackett_luce)", "loss_type")
    if cfg.ld_alpha is not None:
        p.add("ld_alpha is not implemented for online-dpo (LD-DPO's split of the completion log-probs is dpo's); "
              "leave it null", "ld_alpha")
    if cfg.use_weighting:
        p.add("use_weighting is not implemented for online-dpo (WPO's weights need the output layer's log Σ p²); "
              "set it false", "use_weighting")


OnlineDPOConfig = compose(
    "OnlineDPOConfig", "Online DPO: each step samples two completions per prompt from the current policy, ranks "
                       "them by the reward and takes a pairwise-loss step against the frozen reference.",
    *ONLINE, LossGroup, OnlineDPOGroup,
    defaults={"output_dir": "runs/online_dpo", "learning_rate": 5e-7, "temperature": 0.9},
    helps={"per_device_train_batch_size": "Prompts per process per micro-batch (two completions each)."},
    without={**ONLINE_WITHOUT,
             "reward_model_path": "give the reward model in reward_funcs=[path] (any number of rewards, weighted "
                                  "by reward_weights)"},
    check=_online_dpo_check)


@dataclass(frozen=True)
class EvalGroup:
    """What to evaluate, and where the numbers go."""

    ref_model_name_or_path: str = setting("", "Reference π_ref the policy was trained against. Required, unless "
                                              "model_name_or_path is a training run's output_dir or final/ folder: "
                                              "then it, β, the loss and the data settings come from the run's "
                                              "config.json (a value given here wins).")
    eval_file: str = setting("", "Preference data to evaluate on (a DatasetDict: its dataset_test_split). Required "
                                 "unless dataset_name is set.")
    dataset_name: str | None = setting(None, "A Hub dataset id (or local folder) to evaluate on: its "
                                             "dataset_test_split.")
    dataset_config: str | None = setting(None, "The dataset's configuration (datasets.load_dataset's `name`).")
    dataset_test_split: str = setting("test", "Split to evaluate on, of a dataset with splits.")
    prompt_field: str = setting("prompt", "As in training.")
    system_field: str | None = setting(None, "As in training.")
    per_device_eval_batch_size: int = setting(8, "Examples per evaluation batch.")
    output_file: str | None = setting(None, "Write the metrics as JSON here too.")
    seed: int = setting(42, "kto only: seed of the fixed KL partners (use the training run's seed).")

    def check(self, p: Problems) -> None:
        p.require(self, "model_name_or_path", "is required")
        if not self.eval_file and not self.dataset_name:
            p.add("eval_file is required (or dataset_name)", "eval_file")
        p.require(self, "ref_model_name_or_path", "is required")
        p.positive(self, "per_device_eval_batch_size")
        p.in_range(self, "seed", "[0, 4294967295]")   # as the training run's seed
        if self.seed != 42 and getattr(self, "loss_type", None) != ["kto"]:
            p.add("seed is set but only loss_type kto uses it (for its KL partners)", "seed")


EvalConfig = compose(
    "EvalConfig", "Held-out preference evaluation of a policy against a reference.",
    LossGroup, ModelGroup, EvalGroup, PreferenceColumnsGroup, TextGroup, DeviceGroup, LogprobGroup,
    helps={"model_name_or_path": "Policy to evaluate (Hugging Face folder or 'smollm2'). Required.",
           "max_length": "As in training.", "max_prompt_length": "As in training.",
           "use_chat_template": "As in training.", "padding_free": "As in training."})

STAGE_CONFIGS = (TrainingConfig, SFTConfig, DPOConfig, RMConfig, RLConfig, GRPOConfig, OnlineDPOConfig, EvalConfig)

# The config each command reads (`preftune <command>`): ppo, rloo and reinforce are RLConfig's algorithms.
COMMAND_CONFIGS = {"sft": SFTConfig, "dpo": DPOConfig, "eval": EvalConfig, "rm": RMConfig, "ppo": RLConfig,
                   "rloo": RLConfig, "reinforce": RLConfig, "grpo": GRPOConfig, "online-dpo": OnlineDPOConfig}

__all__ = ["COMMAND_CONFIGS", "DPOConfig", "EvalConfig", "GRPOConfig", "OnlineDPOConfig", "RLConfig", "RMConfig",
           "SFTConfig", "STAGE_CONFIGS", "TrainingConfig"]
