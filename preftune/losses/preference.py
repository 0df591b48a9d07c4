"""Preference losses: pure functions of per-sequence log-probabilities.

Every loss here has the same signature

    fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta, **hp)
        -> (losses, chosen_rewards, rejected_rewards)

All inputs and outputs have shape (B,): one entry per preference pair. A log-prob is the SUM of the
completion's token log-probs under the model (prompt tokens excluded). The returned rewards are the
implicit rewards r̂(x, y) = β (log π_θ(y|x) − log π_ref(y|x)) (Rafailov et al. 2023, §5), detached:
they are what the metrics report, never what is differentiated.

Losses take no config object and never see a model: a new loss is one function + one registry line.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

LossOutput = tuple[Tensor, Tensor, Tensor]


def _implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    chosen = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return chosen, rejected


def _logits(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """h = log π/π_ref (y_w) − log π/π_ref (y_l): the log-ratio margin, before β."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def sigmoid(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO (Rafailov et al. 2023, eq. 7), with conservative DPO label smoothing (cDPO).

        h = log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)
        L = −(1 − ε) log σ(β h) − ε log σ(−β h)

    ε = ``label_smoothing`` is the assumed probability that a preference label is flipped
    (Mitchell 2023, "A note on DPO with noisy preferences"); ε = 0 is plain DPO. At θ = ref, h = 0 and
    the loss is log 2. Shapes: all inputs (B,), outputs (B,).
    """
    h = _logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return (losses, *_implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17): a squared loss that pulls the log-ratio margin to 1/(2β) instead of
    pushing it to infinity, so deterministic preferences do not drive π_θ to zero on y_l.

        L = (h − 1/(2β))²,   h as in :func:`sigmoid`

    Here β plays the role of the paper's τ (the KL strength). Log-probs are the sums over the
    completion's tokens, as in the paper (TRL averages them per token instead). Shapes: (B,) → (B,).
    """
    h = _logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return (losses, *_implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def unlikelihood(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """The unweighted baseline the DPO paper contrasts with (Rafailov et al. 2023, §5 and App. E):
    raise log π(y_w|x), lower log π(y_l|x), with no σ(r̂_l − r̂_w) weight.

        L = −β (log π_θ(y_w|x) − log π_θ(y_l|x))

    Its gradient equals DPO's with every pair weighted 1, so nothing stops it once a pair is ranked
    right: the model degenerates (mass leaves both completions). Kept so that claim can be shown.
    The reference enters only the reported rewards. Shapes: (B,) → (B,).
    """
    losses = -beta * (policy_chosen_logps - policy_rejected_logps)
    return (losses, *_implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))
