"""The RL stages of RLHF as pure tensor math. Nothing here sees a model, a tokenizer or a config
object; the ``ppo`` / ``rloo`` / ``grpo`` stages wire it up.

Stable API (import from ``preftune.rl``). Token-level tensors are (B, T) with a bool ``mask`` (B, T);
per-completion tensors are (B,); groups are the G = ``num_generations`` consecutive completions of a
prompt. Names and defaults of the GRPO family follow TRL 1.16's ``GRPOConfig``.

Rewards and advantages (:mod:`~preftune.rl.advantages`)
    group_advantages(rewards, num_generations, scale_rewards="group")  GRPO / Dr. GRPO; "group"|"batch"|"none"
    zero_std_groups(rewards, num_generations)                          groups without learning signal
    kl_penalised_scores(scores, kl, mask, kl_coef)                     r − β Σ_t kl_t (KL in the reward)
    reinforce_pp_advantages(scores, kl, mask, kl_coef, num_generations=None, moments=None)   REINFORCE++(-baseline)
    reinforce_pp_returns, masked_moments                               its pieces, for a global batch over ranks
    rloo_advantages, batch_mean_baseline, gae, token_level_rewards   (PPO / RLOO)

GRPO-family losses (:mod:`~preftune.rl.grpo`, :mod:`~preftune.rl.aggregation`)
    grpo_loss(logprobs, advantages, mask, old_logprobs=None, ref_logprobs=None, loss_type="dapo",
              beta=0.0, epsilon=0.2, epsilon_high=None, delta=None, importance_sampling_level="token",
              kl_estimator="k3", use_bias_correction_kl=True, max_completion_length=None, ...)
        -> PolicyLoss(total, units, stats); the step's loss is Σ total / Σ units over every micro-batch
           and rank (``.loss`` = total / units for one micro-batch; ``step_share`` for DDP-style trainers)
    LOSS_TYPES: grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo -> LossType(surrogate, aggregation)
    importance_log_weights (token | sequence = GSPO), clipped_surrogate (ε_low, ε_high, δ),
    cispo_surrogate, sapo_surrogate, kl_loss_term (k1/k2/k3, × ρ), off_policy_sequence_mask,
    AGGREGATIONS, step_share

Rollout shaping (:mod:`~preftune.rl.rollout`)
    truncated_completions, mask_truncated        ``mask_truncated_completions``
    soft_overlong_punishment(lengths, max_completion_length, soft_punish_cache)   DAPO eq. 13
    groups_with_signal, fill_batch, group_rows   DAPO dynamic sampling: filter, refill policy, row indices

KL and PPO (:mod:`~preftune.rl.kl`, :mod:`~preftune.rl.surrogate`)
    kl_penalty (k1, k2, k3, abs), Fixed/AdaptiveKLController,
    ppo_policy_loss, value_loss, sequence_policy_gradient_loss

Masked reductions (:mod:`~preftune.rl.masked`)
    masked_mean / masked_sum / masked_whiten, as_bool_mask
"""

from preftune.rl.advantages import (
    SCALE_REWARDS,
    batch_mean_baseline,
    gae,
    group_advantages,
    kl_penalised_scores,
    masked_moments,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    rloo_advantages,
    token_level_rewards,
    zero_std_groups,
)
from preftune.rl.aggregation import AGGREGATIONS, step_share
from preftune.rl.grpo import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_TYPES,
    LossType,
    PolicyLoss,
    cispo_surrogate,
    clipped_surrogate,
    grpo_loss,
    importance_log_weights,
    kl_loss_term,
    off_policy_sequence_mask,
    sapo_surrogate,
)
from preftune.rl.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
)
from preftune.rl.masked import as_bool_mask, masked_mean, masked_sum, masked_whiten
from preftune.rl.rollout import (
    fill_batch,
    group_rows,
    groups_with_signal,
    mask_truncated,
    soft_overlong_punishment,
    truncated_completions,
)
from preftune.rl.surrogate import (
    ppo_policy_loss,
    sequence_policy_gradient_loss,
    value_loss,
)

__all__ = [
    "AGGREGATIONS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "KL_ESTIMATORS",
    "LOSS_TYPES",
    "SCALE_REWARDS",
    "AdaptiveKLController",
    "FixedKLController",
    "LossType",
    "PolicyLoss",
    "as_bool_mask",
    "batch_mean_baseline",
    "cispo_surrogate",
    "clipped_surrogate",
    "fill_batch",
    "gae",
    "group_advantages",
    "group_rows",
    "groups_with_signal",
    "grpo_loss",
    "importance_log_weights",
    "kl_loss_term",
    "kl_penalised_scores",
    "kl_penalty",
    "mask_truncated",
    "masked_mean",
    "masked_moments",
    "masked_sum",
    "masked_whiten",
    "off_policy_sequence_mask",
    "ppo_policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_returns",
    "rloo_advantages",
    "sapo_surrogate",
    "sequence_policy_gradient_loss",
    "soft_overlong_punishment",
    "step_share",
    "token_level_rewards",
    "truncated_completions",
    "value_loss",
    "zero_std_groups",
]
