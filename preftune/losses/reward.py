"""Reward-model losses on scalar rewards r_φ(x, y) (docs/maths.md §preference, §rlhf.rm): the RLHF baseline DPO
replaces. Pure functions of reward tensors; the model with a scalar head lives elsewhere.

Shared with DPO by construction: evaluated on the implicit rewards r̂ = β log π_θ/π_ref, Bradley–Terry
is the DPO sigmoid loss and Plackett–Luce is listwise DPO (tests/losses/test_reward.py checks both).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from preftune.losses.listwise import plackett_luce_nll


def bradley_terry(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> Tensor:
    """Bradley–Terry negative log-likelihood (Bradley & Terry 1952, "Rank Analysis of Incomplete Block
    Designs"; as a reward-model loss: Ouyang et al. 2022, "Training language models to follow
    instructions with human feedback", eq. 1), with TRL RewardTrainer's two options.

        L = −log σ(r_c − r_r − m) + c · (r_c + r_r)²

    m = ``margin`` (a float or (B,) tensor; None = 0) demands the chosen reward win by at least m, as
    in Llama 2's graded preferences (Touvron et al. 2023). c = ``center_rewards_coefficient``
    (None = 0) pulls rewards toward zero mean (Eisenstein et al. 2023, "Helping or Herding?"), the
    normalisation docs/maths.md §rlhf.rm calls for, without a separate pass. TRL adds c · mean_B((r_c + r_r)²) to the
    batch-mean loss; here it is added per pair, so the mean of these losses is TRL's loss.
    Shapes: rewards (B,) → losses (B,).
    """
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        logits = logits - margin
    losses = -F.logsigmoid(logits)
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses


def plackett_luce_rewards(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """Plackett–Luce negative log-likelihood of a ranking from scalar rewards (docs/maths.md §preference.pl).

        L = −Σ_k log [ exp(r_k) / Σ_{j ≥ k} exp(r_j) ]

    ``rewards`` (B, K), column 0 the best ranked; ``mask`` (B, K) bool, True = real entry, for ragged
    lists. With K = 2 this is :func:`bradley_terry` without margin or centering. Returns (B,).
    """
    return plackett_luce_nll(rewards, mask)
