"""Each stage's config: the groups it is composed of, its defaults, and its checks across groups.

A stage takes exactly the keys it uses. A key it leaves out on purpose is listed with the reason, so a
user who sets it learns why instead of seeing "unknown key".
"""

from __future__ import annotations

from dataclasses import dataclass

from preftune.config.compose import compose
from preftune.config.fields import (
    Problems,
    changed,
    in_range,
    non_negative,
    positive,
    positive_or_null,
    require,
    setting,
)
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
from preftune.config.rl import RLGroup
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
        positive_or_null(self, p, "precompute_ref_batch_size")
        in_range(self, p, "ref_model_mixup_alpha", "[0, 1]")
        positive(self, p, "ref_model_sync_steps")
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
        non_negative(self, p, "margin")
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


def _rl_check(cfg, p: Problems) -> None:
    rollout = cfg.per_device_train_batch_size * cfg.num_generations
    if cfg.algorithm == "ppo" and cfg.num_mini_batches > 0 and rollout % cfg.num_mini_batches:
        p.add(f"num_mini_batches ({cfg.num_mini_batches}) must divide the rollout batch "
              f"(per_device_train_batch_size × num_generations = {rollout})")


RLConfig = compose(
    "RLConfig", "Online KL-regularised RL: sample, score, penalise KL to π_ref, update (PPO/RLOO/REINFORCE).",
    *TRAINING, LogprobGroup, RLGroup,
    defaults={"output_dir": "runs/rl", "learning_rate": 1e-6, "disable_dropout": False},
    helps={"per_device_train_batch_size": "Prompts per process per rollout.",
           "max_steps": "If > 0, stop after this many rollouts (each: sample, score, then ppo_epochs × "
                        "num_mini_batches optimizer steps for ppo, one for rloo / reinforce)."},
    without={"fsdp": "the ppo/rloo/reinforce stage shards nothing yet (sft and dpo do)",
             "truncation_mode": "prompts are cut from the left to max_prompt_length; completions are generated",
             "max_completion_length": "the generation length is max_new_tokens",
             "torch_compile": "sampling would recompile for every generated length (sft and dpo compile)",
             "gradient_accumulation_steps": "a rollout is one batch of prompts (per_device_train_batch_size); ppo "
                                            "splits it with num_mini_batches"},
    check=_rl_check)


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
        require(self, p, "model_name_or_path", "is required")
        if not self.eval_file and not self.dataset_name:
            p.add("eval_file is required (or dataset_name)", "eval_file")
        require(self, p, "ref_model_name_or_path", "is required")
        positive(self, p, "per_device_eval_batch_size")
        if self.seed != 42 and getattr(self, "loss_type", None) != ["kto"]:
            p.add("seed is set but only loss_type kto uses it (for its KL partners)", "seed")


EvalConfig = compose(
    "EvalConfig", "Held-out preference evaluation of a policy against a reference.",
    LossGroup, ModelGroup, EvalGroup, PreferenceColumnsGroup, TextGroup, DeviceGroup, LogprobGroup,
    helps={"model_name_or_path": "Policy to evaluate (Hugging Face folder or 'smollm2'). Required.",
           "max_length": "As in training.", "max_prompt_length": "As in training.",
           "use_chat_template": "As in training.", "padding_free": "As in training."})

STAGE_CONFIGS = (TrainingConfig, SFTConfig, DPOConfig, RMConfig, RLConfig, EvalConfig)

__all__ = ["DPOConfig", "EvalConfig", "RLConfig", "RMConfig", "SFTConfig", "STAGE_CONFIGS", "TrainingConfig"]
