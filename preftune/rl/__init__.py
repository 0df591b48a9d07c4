"""The RL stage of RLHF (SPEC §1, §3) as pure tensor math: KL estimators and β controllers
(:mod:`~preftune.rl.kl`), token rewards, GAE and REINFORCE / RLOO baselines
(:mod:`~preftune.rl.advantages`), PPO and policy-gradient losses (:mod:`~preftune.rl.surrogate`).
Nothing here sees a model, a tokenizer or a config object; the ``ppo`` / ``rloo`` stages wire it up.
"""

from preftune.rl.advantages import (
    MovingAverageBaseline,
    batch_mean_baseline,
    gae,
    rloo_advantages,
    token_level_rewards,
)
from preftune.rl.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_whiten,
)
from preftune.rl.surrogate import (
    ppo_policy_loss,
    sequence_policy_gradient_loss,
    token_entropy_sample_estimate,
    value_loss,
)

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "MovingAverageBaseline",
    "batch_mean_baseline",
    "gae",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "ppo_policy_loss",
    "rloo_advantages",
    "sequence_policy_gradient_loss",
    "token_entropy_sample_estimate",
    "token_level_rewards",
    "value_loss",
]
