"""The online-RL group (ppo, rloo, reinforce): sampling, reward, KL penalty, policy-gradient update."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class RLGroup:
    """Online KL-regularised RL: sample, score, penalise KL to π_ref, update (PPO/RLOO/REINFORCE)."""

    algorithm: str = setting("ppo", "ppo (clipped surrogate + value head + GAE), rloo (leave-one-out baseline over "
                                    "num_generations samples per prompt) or reinforce (batch-mean baseline).",
                             choices=("ppo", "rloo", "reinforce"))
    reward: str = setting("", "Reward: a reward-model folder (from `preftune rm`) or a Python callable "
                              "'module:function' taking (prompts, completions) and returning floats. Required.")
    ref_model_name_or_path: str | None = setting(None, "Reference π_ref of the KL penalty (null = the starting "
                                                       "policy).")
    num_generations: int = setting(1, "Completions sampled per prompt (rloo needs >= 2; the baseline is the "
                                      "others').")
    max_new_tokens: int = setting(48, "Most tokens generated per completion (generation stops at EOS).")
    temperature: float = setting(1.0, "Sampling temperature.")
    top_p: float = setting(1.0, "Nucleus sampling mass (1 = off). Below 1 the samples come from a truncated "
                                "distribution while the log-probs are the full tempered softmax's: slightly "
                                "off-policy.")
    kl_coef: float = setting(0.05, "β of the KL penalty (initial value when adaptive_kl).")
    kl_estimator: str = setting("k1", "Per-token KL estimator in the reward: k1 = log π/π_ref (the one whose "
                                      "gradient is right), k3 = (r − 1) − log r, r = π_ref/π: an unbiased, "
                                      "never-negative estimate of the KL's value but, used as a reward, a biased "
                                      "gradient: in `preftune theory` PPO with k3 settles 0.6 nats from π*.",
                                choices=("k1", "k3"))
    adaptive_kl: bool = setting(False, "Adapt β so the measured KL tracks kl_target (Ziegler et al. 2019).")
    kl_target: float = setting(6.0, "adaptive_kl: target KL per completion, in nats.")
    kl_horizon: int = setting(10000, "adaptive_kl: horizon (in samples) of the proportional controller.")
    ppo_epochs: int = setting(4, "ppo: passes over each rollout batch.")
    num_mini_batches: int = setting(1, "ppo: minibatches per pass (each one optimizer step).")
    clip_range: float = setting(0.2, "ppo: ε of the clipped probability ratio.")
    clip_range_value: float | None = setting(0.2, "ppo: clip value predictions to old ± this (null = no value "
                                                  "clipping).")
    vf_coef: float = setting(0.1, "ppo: weight of the value loss (the value head shares the policy's trunk).")
    gamma: float = setting(1.0, "ppo: discount.")
    lam: float = setting(0.95, "ppo: GAE λ.")
    whiten_advantages: bool = setting(True, "Normalise advantages to zero mean, unit variance per rollout batch.")
    missing_eos_penalty: float | None = setting(None, "Subtract this from the score of completions that hit "
                                                      "max_new_tokens without EOS (null = off).")
    reward_batch_size: int = setting(32, "Completions per reward-model call.")

    def check(self, p: Problems) -> None:
        require(self, p, "reward", "is required: a reward-model folder or 'module:function'")
        positive(self, p, "num_generations", "max_new_tokens", "temperature", "kl_horizon", "ppo_epochs",
                 "num_mini_batches", "kl_target", "reward_batch_size")
        positive(self, p, "clip_range")  # as preftune.rl.surrogate requires: ε = 0 pins every ratio to 1
        positive_or_null(self, p, "clip_range_value")
        non_negative(self, p, "kl_coef", "vf_coef")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            # A negative penalty would reward rambling to max_new_tokens.
            p.add(f"missing_eos_penalty must be >= 0 or null, got {self.missing_eos_penalty}", "missing_eos_penalty")
        in_range(self, p, "top_p", "(0, 1]")
        in_range(self, p, "gamma", "[0, 1]")
        in_range(self, p, "lam", "[0, 1]")
        if self.algorithm == "rloo" and self.num_generations < 2:
            p.add("algorithm rloo needs num_generations >= 2 (the baseline is the other samples' mean)")
        if self.algorithm != "ppo":
            for key in changed(self, "ppo_epochs", "num_mini_batches", "clip_range", "clip_range_value", "vf_coef",
                               "gamma", "lam"):
                p.add(f"{key} is set but only algorithm ppo uses it", key)
        if not self.adaptive_kl:
            for key in changed(self, "kl_target", "kl_horizon"):
                p.add(f"{key} is set but adaptive_kl is false, so it would be ignored", key)
