"""Registry of preference losses: ``preftune.losses.get(name)`` returns a pure function.

Names follow TRL's ``DPOConfig.loss_type`` so a migrating user's settings carry over; hyperparameter
names too (``label_smoothing``, ``discopop_tau``, ``f_divergence_type``, ``f_alpha_divergence_coef``).
``_REGISTRY`` holds the pairwise losses, all called as

    fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta, **hp)
        -> (losses, chosen_rewards, rejected_rewards)

Losses that need completion token counts also take ``chosen_lengths`` / ``rejected_lengths`` (B,)
keyword tensors (:func:`needs_lengths`); those are data, not hyperparameters. Losses with another
signature live in their own dicts: ``UNPAIRED`` (KTO: single labelled examples) and ``LISTWISE``
(Plackett–Luce over (B, K) rankings); reward-model losses are in :mod:`preftune.losses.reward`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from preftune.losses import anchored, aot, listwise, pairwise_extra, preference, reference_free, unpaired
from preftune.losses.listwise import plackett_luce
from preftune.losses.unpaired import kto, kto_kl_estimate

LossFn = Callable[..., tuple]

LENGTH_ARGUMENTS = frozenset({"chosen_lengths", "rejected_lengths"})

_REGISTRY: dict[str, LossFn] = {
    "sigmoid": preference.sigmoid,
    "ipo": preference.ipo,
    "unlikelihood": preference.unlikelihood,
    # TRL DPOTrainer loss types
    "hinge": pairwise_extra.hinge,
    "robust": pairwise_extra.robust,
    "exo_pair": pairwise_extra.exo_pair,
    "discopop": pairwise_extra.discopop,
    "sigmoid_norm": pairwise_extra.sigmoid_norm,
    "nca_pair": anchored.nca_pair,
    "bco_pair": anchored.bco_pair,
    "sppo_hard": anchored.sppo_hard,
    "apo_zero": anchored.apo_zero,
    "apo_down": anchored.apo_down,
    "aot": aot.aot,
    "aot_unpaired": aot.aot_unpaired,
    # reference-free, beyond TRL's DPOTrainer
    "simpo": reference_free.simpo,
    "orpo": reference_free.orpo,
}

# Other signatures: not callable by the pairwise DPO stage, so kept out of _REGISTRY / names().
UNPAIRED: dict[str, Callable[..., tuple]] = {"kto": unpaired.kto}
LISTWISE: dict[str, Callable[..., tuple]] = {"plackett_luce": listwise.plackett_luce}

__all__ = ["LISTWISE", "UNPAIRED", "get", "hyperparameters", "kto", "kto_kl_estimate", "names", "needs_lengths",
           "plackett_luce", "register"]


def get(name: str) -> LossFn:
    """The loss function registered under ``name``; a KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known losses: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def register(name: str, fn: LossFn) -> None:
    if name in _REGISTRY:
        raise ValueError(f"loss {name!r} is already registered")
    _REGISTRY[name] = fn


def _keyword_only(name: str) -> set[str]:
    params = inspect.signature(get(name)).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def hyperparameters(name: str) -> set[str]:
    """Keyword-only hyperparameters (besides beta) the loss accepts, read from its signature.
    Completion lengths are per-example data, not hyperparameters: see :func:`needs_lengths`."""
    return _keyword_only(name) - {"beta"} - LENGTH_ARGUMENTS


def needs_lengths(name: str) -> bool:
    """Whether the loss must be called with ``chosen_lengths=`` and ``rejected_lengths=`` (B,) tensors."""
    return bool(_keyword_only(name) & LENGTH_ARGUMENTS)
