"""The online stages' groups: prompts, sampling, rewards, and each algorithm's keys (ppo / rloo /
reinforce, grpo, online-dpo). Names and defaults are TRL 1.16's (``GRPOConfig``, ``OnlineDPOConfig``)
where TRL has the concept."""

from __future__ import annotations

from dataclasses import dataclass

from preftune.config.fields import Problems, changed, setting
from preftune.config.groups import USE_CHAT_TEMPLATE


@dataclass(frozen=True)
class PromptGroup:
    """How prompts become tokens (completions are sampled, so only the prompt has a length limit)."""

    max_prompt_length: int | None = setting(256, "Max prompt tokens; longer prompts are cut from the left (each "
                                                 "cut counted in the log; null = never cut).")
    use_chat_template: bool | None = setting(None, USE_CHAT_TEMPLATE)

    def check(self, p: Problems) -> None:
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            p.add(f"max_prompt_length must be >= 1 or null, got {self.max_prompt_length}", "max_prompt_length")


@dataclass(frozen=True)
class SamplingGroup:
    """How completions are sampled (the trainer's log-probs are those of the tempered distribution)."""

    temperature: float = setting(1.0, "Sampling temperature.")
    top_p: float = setting(1.0, "Nucleus sampling mass (1 = off). Below 1 the samples come from a truncated "
                                "distribution while the log-probs are the full tempered softmax's: slightly "
                                "off-policy.")
    top_k: int = setting(0, "Sample among the k most likely tokens only (0 = off); off-policy like top_p.")
    min_p: float | None = setting(None, "Drop tokens less likely than min_p × the most likely one (null = off).")
    repetition_penalty: float = setting(1.0, "Penalise tokens already in the prompt or completion (1 = off).")
    eval_greedy: bool = setting(False, "Held-out evaluation decodes greedily (argmax) instead of sampling: the "
                                       "accuracy of the policy's most likely answer.")

    def check(self, p: Problems) -> None:
        p.positive(self, "temperature", "repetition_penalty")
        p.non_negative(self, "top_k")
        p.in_range(self, "top_p", "(0, 1]")
        p.in_range(self, "min_p", "[0, 1]")


@dataclass(frozen=True)
class RewardGroup:
    """What scores the sampled completions (preftune/rewards)."""

    reward_funcs: list[str] | None = setting(None, "Rewards, summed with reward_weights: reward-model folders or "
                                                   "Hub ids, 'module:function' callables (TRL's keyword signature "
                                                   "or preftune's (prompts, completions)), or the built-ins "
                                                   "exact_answer, answer_format, countdown.")
    reward_weights: list[float] | None = setting(None, "One weight per reward_funcs entry (null = all 1).")
    reward: str = setting("", "One reward, as reward_funcs=[reward] (the older key).")
    reward_batch_size: int = setting(32, "Completions per reward-model call.")

    def check(self, p: Problems) -> None:
        p.positive(self, "reward_batch_size")
        if self.reward and self.reward_funcs:
            p.add("reward and reward_funcs are both set: list every reward in reward_funcs", "reward")
        elif not reward_specs(self):
            p.add("reward_funcs is required: reward-model folders or Hub ids, 'module:function' callables or "
                  "built-in names (exact_answer, answer_format, countdown)", "reward_funcs")
        elif self.reward_weights is not None and len(self.reward_weights) != len(reward_specs(self)):
            p.add(f"reward_weights has {len(self.reward_weights)} entries but reward_funcs has "
                  f"{len(reward_specs(self))}", "reward_weights")


def reward_specs(cfg) -> list[str]:
    """The rewards a config names: ``reward_funcs``, or the older single ``reward``."""
    return list(cfg.reward_funcs) if cfg.reward_funcs else ([cfg.reward] if cfg.reward else [])


@dataclass(frozen=True)
class RLGroup:
    """Online KL-regularised RL: sample, score, penalise KL to π_ref, update (PPO/RLOO/REINFORCE)."""

    algorithm: str = setting("ppo", "ppo (clipped surrogate + value head + GAE), rloo (leave-one-out baseline over "
                                    "num_generations samples per prompt) or reinforce (batch-mean baseline).",
                             choices=("ppo", "rloo", "reinforce"))
    ref_model_name_or_path: str | None = setting(None, "Reference π_ref of the KL penalty (null = the starting "
                                                       "policy).")
    num_generations: int = setting(1, "Completions sampled per prompt (rloo needs >= 2; the baseline is the "
                                      "others').")
    max_new_tokens: int = setting(48, "Most tokens generated per completion (generation stops at EOS).")
    kl_coef: float = setting(0.05, "β of the KL penalty (initial value when adaptive_kl).")
    kl_estimator: str = setting("k1", "Per-token KL estimator in the reward: k1 = log π/π_ref (the one whose "
                                      "gradient is right), k3 = (r − 1) − log r, r = π_ref/π: an unbiased, "
                                      "never-negative estimate of the KL's value but, used as a reward, a biased "
                                      "gradient: in `preftune theory` PPO with k3 settles 0.6 nats from π*.",
                                choices=("k1", "k3"))
    adaptive_kl: bool = setting(False, "Adapt β so the measured KL tracks kl_target (Ziegler et al. 2019).")
    kl_target: float = setting(6.0, "adaptive_kl: target KL per completion, in nats.")
    kl_horizon: int = setting(10000, "adaptive_kl: horizon (in samples) of the proportional controller.")
    ppo_epochs: int = setting(4, "ppo: passes over each rollout.")
    num_mini_batches: int = setting(1, "ppo: minibatches per pass (each one optimizer step).")
    clip_range: float = setting(0.2, "ppo: ε of the clipped probability ratio.")
    clip_range_value: float | None = setting(0.2, "ppo: clip value predictions to old ± this (null = no value "
                                                  "clipping).")
    vf_coef: float = setting(0.1, "ppo: weight of the value loss (the value head shares the policy's trunk).")
    gamma: float = setting(1.0, "ppo: discount.")
    lam: float = setting(0.95, "ppo: GAE λ.")
    whiten_advantages: bool = setting(True, "Normalise advantages to zero mean, unit variance over each rollout "
                                            "(of all processes).")
    missing_eos_penalty: float | None = setting(None, "Subtract this from the score of completions that hit "
                                                      "max_new_tokens without EOS (null = off).")

    def check(self, p: Problems) -> None:
        p.positive(self, "num_generations", "max_new_tokens", "kl_horizon", "ppo_epochs", "num_mini_batches",
                 "kl_target")
        p.positive(self, "clip_range")  # as preftune.rl.surrogate requires: ε = 0 pins every ratio to 1
        p.positive_or_null(self, "clip_range_value")
        p.non_negative(self, "kl_coef", "vf_coef")
        _missing_eos_penalty(self, p)
        p.in_range(self, "gamma", "[0, 1]")
        p.in_range(self, "lam", "[0, 1]")
        if self.algorithm == "rloo" and self.num_generations < 2:
            p.add("algorithm rloo needs num_generations >= 2 (the baseline is the other samples' mean)")
        if self.algorithm != "ppo":
            for key in changed(self, "ppo_epochs", "num_mini_batches", "clip_range", "clip_range_value", "vf_coef",
                               "gamma", "lam"):
                p.add(f"{key} is set but only algorithm ppo uses it", key)
        if not self.adaptive_kl:
            for key in changed(self, "kl_target", "kl_horizon"):
                p.add(f"{key} is set but adaptive_kl is false, so it would be ignored", key)


def _missing_eos_penalty(cfg, p: Problems) -> None:
    if cfg.missing_eos_penalty is not None and cfg.missing_eos_penalty < 0:
        # A negative penalty would reward rambling to the length limit.
        p.add(f"missing_eos_penalty must be >= 0 or null, got {cfg.missing_eos_penalty}", "missing_eos_penalty")


@dataclass(frozen=True)
class GRPOGroup:
    """GRPO and its family (TRL 1.16's GRPOConfig names and defaults; loss_type picks the variant)."""

    num_generations: int = setting(8, "Completions per prompt (a group); >= 2. A process's generation batch "
                                      "holds whole groups.")
    num_generations_eval: int | None = setting(None, "Completions per held-out prompt (null = 1; the mean over "
                                                     "them is the held-out reward).")
    max_completion_length: int = setting(512, "Most tokens generated per completion (generation stops at EOS); "
                                              "dr_grpo's constant normaliser.")
    steps_per_generation: int | None = setting(None, "Micro-batches trained per generation (null = "
                                                     "gradient_accumulation_steps: one optimizer step per "
                                                     "generation).")
    generation_batch_size: int | None = setting(None, "Completions per generation over all processes, instead of "
                                                      "steps_per_generation (= it / (per_device_train_batch_size × "
                                                      "processes)).")
    num_iterations: int = setting(1, "μ: passes over each generation (each reshuffled); > 1 trains on stale "
                                     "samples, which the clipped ratio corrects.")
    beta: float = setting(0.0, "β of the KL to π_ref as a loss term (0 = no reference model is loaded; "
                               "DeepSeek-R1 used 0.001).")
    kl_estimator: str = setting("k3", "Per-token KL estimator of the loss term (GRPO's k3; k1 or k2; see "
                                      "preftune.rl.kl_loss_term for what each gradient optimises).",
                                choices=("k1", "k2", "k3"))
    use_bias_correction_kl: bool = setting(True, "Multiply the KL term by the importance ratio (DeepSeek-V3.2).")
    loss_type: str = setting("dapo", "grpo (per-sequence mean), bnpo (token mean per micro-batch), dr_grpo "
                                     "(constant normaliser), dapo (token mean over the step), cispo (clipped-weight "
                                     "REINFORCE), sapo (soft gate) or luspo (length-weighted sequences).",
                             choices=("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo"))
    epsilon: float = setting(0.2, "ε_low of the clipped ratio.")
    epsilon_high: float | None = setting(None, "ε_high (null = epsilon; DAPO's clip-higher 0.28; cispo: the weight "
                                               "cap, ScaleRL recommends 5).")
    delta: float | None = setting(None, "Cap of the unclipped ratio (two-sided clipping, INTELLECT-2; > 1 + "
                                        "epsilon_high; null = off).")
    importance_sampling_level: str = setting("token", "token ratios, or sequence (GSPO: the length-normalised "
                                                      "sequence ratio).", choices=("token", "sequence"))
    sapo_temperature_pos: float = setting(1.0, "sapo: gate temperature for positive advantages.")
    sapo_temperature_neg: float = setting(1.05, "sapo: gate temperature for non-positive advantages.")
    scale_rewards: str = setting("group", "Divide advantages by the group's reward std (group), the batch's "
                                          "(batch) or not at all (none, Dr. GRPO).",
                                 choices=("group", "batch", "none"))
    multi_objective_aggregation: str = setting("sum_then_normalize", "Several rewards: weighted sum, then the "
                                                                     "group normalisation (sum_then_normalize), or "
                                                                     "each normalised in its group first "
                                                                     "(normalize_then_sum, GDPO).",
                                               choices=("sum_then_normalize", "normalize_then_sum"))
    mask_truncated_completions: bool = setting(False, "Leave completions cut at max_completion_length out of the "
                                                      "loss (DAPO).")
    ref_model_name_or_path: str | None = setting(None, "Reference π_ref of the KL term (null = the starting "
                                                       "policy; unused when beta = 0).")

    def check(self, p: Problems) -> None:
        if self.num_generations < 2:
            p.add(f"num_generations must be >= 2 (GRPO's baseline is the group's other samples), got "
                  f"{self.num_generations}", "num_generations")
        p.positive(self, "max_completion_length", "num_iterations", "epsilon", "sapo_temperature_pos",
                 "sapo_temperature_neg")
        p.positive_or_null(self, "num_generations_eval", "steps_per_generation", "generation_batch_size",
                         "epsilon_high", "delta")
        p.non_negative(self, "beta")
        if self.steps_per_generation is not None and self.generation_batch_size is not None:
            p.add("steps_per_generation and generation_batch_size are both set: give one (TRL's rule)")
        if self.delta is not None and self.epsilon_high is not None and self.delta <= 1 + self.epsilon_high:
            p.add(f"delta must be > 1 + epsilon_high ({1 + self.epsilon_high}), got {self.delta}", "delta")
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            p.add("loss_type luspo needs importance_sampling_level=sequence (TRL's rule)")
        if self.loss_type != "sapo":
            for key in changed(self, "sapo_temperature_pos", "sapo_temperature_neg"):
                p.add(f"{key} is set but only loss_type sapo uses it", key)
        if self.beta == 0:
            for key in changed(self, "kl_estimator", "use_bias_correction_kl", "ref_model_name_or_path"):
                p.add(f"{key} is set but beta is 0 (no KL term), so it would be ignored", key)


@dataclass(frozen=True)
class OnlineDPOGroup:
    """Online DPO: two completions per prompt from the current policy, ranked by the reward (TRL 1.16's
    OnlineDPOConfig names and defaults where shared)."""

    max_new_tokens: int = setting(64, "Most tokens generated per completion (generation stops at EOS).")
    missing_eos_penalty: float | None = setting(None, "Subtract this from the reward of completions that hit "
                                                      "max_new_tokens without EOS (null = off).")
    ref_model_name_or_path: str | None = setting(None, "Reference π_ref (null = the starting policy).")

    def check(self, p: Problems) -> None:
        p.positive(self, "max_new_tokens")
        _missing_eos_penalty(self, p)
