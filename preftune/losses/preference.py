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

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LossOutput = tuple[Tensor, Tensor, Tensor]

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# Largest exponent fed to exp() in the α-divergence score, per dtype: past it exp overflows (float16 at
# ~11.1, float32 at ~88.7). The float16/bfloat16/float32 caps are TRL's, so results agree where TRL runs;
# half precision is evaluated in float32 (as TRL does) so the cast back is the only rounding.
_EXP_CAP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0, torch.float64: 700.0}


def implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """(r̂_w, r̂_l) = β log π_θ/π_ref of each completion, detached: what every loss reports (all (B,))."""
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


def f_divergence_scores(
    logratios: Tensor, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5
) -> Tensor:
    """f-DPO score f'(u) of each completion, u = π_θ(y|x)/π_ref(y|x), from log u (any shape).

    Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
    Divergence Constraints": with the KL of docs/maths.md §objective replaced by an f-divergence, the optimal policy
    satisfies r = β f'(π/π_ref) + const, so the DPO margin h becomes f'(u_w) − f'(u_l). TRL's forms:

        reverse_kl        f'(u) = log u                       (plain DPO)
        forward_kl        f'(u) = 1 − 1/u
        js_divergence     f'(u) = log(2u/(1+u)) = log 2 + log σ(log u)
        alpha_divergence  f'(u) = (u^(α−1) − 1)/(α − 1),  α = ``f_alpha_divergence_coef``; log u at α = 1

    Only the difference f'(u_w) − f'(u_l) is meaningful: the β log Z(x) term cancels in it alone.
    """
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "forward_kl":
        return 1.0 - torch.exp(-logratios)
    if f_divergence_type == "js_divergence":
        return math.log(2.0) + F.logsigmoid(logratios)
    if f_divergence_type == "alpha_divergence":
        alpha = f_alpha_divergence_coef
        if abs(alpha - 1.0) < 1e-6:  # the formula divides by ~0 here; use its limit log u (TRL's cut-off)
            return logratios
        work = torch.promote_types(logratios.dtype, torch.float32)
        t = torch.clamp((alpha - 1.0) * logratios.to(work), max=_EXP_CAP[logratios.dtype])
        return (torch.exp(t) - 1.0).to(logratios.dtype) * (1.0 / (alpha - 1.0))
    raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; known: {', '.join(F_DIVERGENCES)}")


def per_token_mean(values: Tensor, lengths: Tensor) -> Tensor:
    """values / completion length; lengths below 1 count as 1 (TRL's clamp), so an empty completion
    gives its sum rather than a division by zero."""
    return values / lengths.to(values.dtype).clamp(min=1.0)


def f_scores(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    f_divergence_type: str,
    f_alpha_divergence_coef: float,
) -> tuple[Tensor, Tensor]:
    """(f'(u_w), f'(u_l)): the per-completion scores whose difference is the margin of f-DPO losses."""
    return (f_divergence_scores(policy_chosen_logps - ref_chosen_logps, f_divergence_type, f_alpha_divergence_coef),
            f_divergence_scores(policy_rejected_logps - ref_rejected_logps, f_divergence_type,
                                f_alpha_divergence_coef))


def f_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    f_divergence_type: str,
    f_alpha_divergence_coef: float,
) -> Tensor:
    """h_f = f'(u_w) − f'(u_l); equals :func:`_logits` for reverse KL (returned as is, bit for bit)."""
    if f_divergence_type == "reverse_kl":
        return _logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen, rejected = f_scores(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                               f_divergence_type, f_alpha_divergence_coef)
    return chosen - rejected


def sigmoid(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """DPO (Rafailov et al. 2023, eq. 7), with conservative DPO label smoothing (cDPO) and f-DPO.

        h = log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)
        L = −(1 − ε) log σ(β h) − ε log σ(−β h)

    ε = ``label_smoothing`` is the assumed probability that a preference label is flipped
    (Mitchell 2023, "A note on DPO with noisy preferences"); ε = 0 is plain DPO. At θ = ref, h = 0 and
    the loss is log 2. ``f_divergence_type`` ≠ "reverse_kl" replaces h by f'(u_w) − f'(u_l) (Wang et al.
    2023, see :func:`f_divergence_scores`); the reported rewards stay β log π/π_ref. TRL 1.16's
    "sigmoid" ignores label_smoothing (its "robust" and "exo_pair" use it); at ε = 0 the two agree.
    Shapes: all inputs (B,), outputs (B,).
    """
    h = f_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                  f_divergence_type, f_alpha_divergence_coef)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """IPO as TRL 1.16 computes it (``loss_type="ipo"``): the squared loss of Azar et al. 2023 ("A General
    Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17) on per-token averages.

        h_avg = f'(u_w) / |y_w| − f'(u_l) / |y_l|,   L = (h_avg − 1/(2β))²

    f'(u) = log π_θ(y|x)/π_ref(y|x) by default (f-DPO options as in :func:`sigmoid`); ``chosen_lengths`` /
    ``rejected_lengths`` are completion token counts (B,), values below 1 count as 1. Dividing by the
    length keeps β meaningful across completion lengths: with sums, a 120-token completion's log-ratio
    dwarfs the target 1/(2β) (TRL's code notes that the IPO authors confirmed their reported results use
    this form). The paper's summed form is :func:`ipo_sum`. β is the paper's τ. Shapes: (B,) → (B,).
    """
    chosen, rejected = f_scores(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                               f_divergence_type, f_alpha_divergence_coef)
    h_avg = per_token_mean(chosen, chosen_lengths) - per_token_mean(rejected, rejected_lengths)
    losses = (h_avg - 1.0 / (2.0 * beta)) ** 2
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def ipo_sum(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """IPO exactly as the paper writes it (Azar et al. 2023, eq. 17): log-probs summed over the
    completion, no length normalisation.

        L = (h − 1/(2β))²,   h = log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)

    (f-divergence options as in :func:`sigmoid`.) A squared loss pulls the margin to 1/(2β) instead of
    pushing it to infinity, so deterministic preferences do not drive π_θ(y_l) to zero; its population
    optimum is π ∝ π_ref exp(p(y ≻ π_ref)/β) (Ψ = identity). β plays the paper's τ. The tabular world
    (``preftune theory``) uses this form: there a sequence's log-prob is exactly the paper's quantity.
    :func:`ipo` is TRL's per-token form. Shapes: (B,) → (B,).
    """
    h = f_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                  f_divergence_type, f_alpha_divergence_coef)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return (losses, *implicit_rewards(
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
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))
