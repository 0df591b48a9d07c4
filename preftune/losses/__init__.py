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

``ipo`` is TRL's (per-token averaged log-ratios); ``ipo_sum`` the IPO paper's summed form (a separate
name rather than a switch, so each name is one equation and the tabular world asks for its form by
name). :mod:`preftune.losses.weighting` holds LD-DPO's log-probs and WPO's pair weights, which the
pairwise objective applies around any of these.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from preftune.losses import anchored, aot, listwise, pairwise_extra, preference, reference_free, unpaired
from preftune.losses.listwise import plackett_luce
from preftune.losses.unpaired import kto

LossFn = Callable[..., tuple]

LENGTH_ARGUMENTS = frozenset({"chosen_lengths", "rejected_lengths"})
# Keyword inputs that are per-example data or batch statistics, never hyperparameters.
DATA_ARGUMENTS = LENGTH_ARGUMENTS | {"kl", "mask"}

_REGISTRY: dict[str, LossFn] = {
    "sigmoid": preference.sigmoid,
    "ipo": preference.ipo,
    "ipo_sum": preference.ipo_sum,
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
    "sft": reference_free.sft,
    # reference-free, beyond TRL's DPOTrainer
    "simpo": reference_free.simpo,
    "orpo": reference_free.orpo,
}

# Losses that never read the reference log-probs (only the reported rewards do): a run of these alone
# needs no reference model and no reference pass.
REFERENCE_FREE = frozenset({"simpo", "orpo", "sft"})

# Losses of the chosen completion's own likelihood, not of a preference margin: they read the plain summed
# log-probs even when LD-DPO reweights what the others see (TRL's sft reads the unweighted tokens).
PLAIN_LIKELIHOOD = frozenset({"sft"})

# Losses that sort the batch, so entry i is a quantile, not pair i: a per-pair weight (WPO) cannot apply.
BATCH_SORTED = frozenset({"aot", "aot_unpaired"})

# Other signatures (the DPO stage trains them from other data layouts), so kept out of names().
UNPAIRED: dict[str, Callable[..., tuple]] = {"kto": unpaired.kto}
LISTWISE: dict[str, Callable[..., tuple]] = {"plackett_luce": listwise.plackett_luce}

__all__ = ["BATCH_SORTED", "LISTWISE", "PLAIN_LIKELIHOOD", "REFERENCE_FREE", "UNPAIRED", "all_names", "get",
           "hyperparameters", "kind", "kto", "names", "needs_lengths", "plackett_luce"]


def get(name: str) -> LossFn:
    """The loss function registered under ``name`` (any kind); a KeyError lists the known names."""
    for table in (_REGISTRY, UNPAIRED, LISTWISE):
        if name in table:
            return table[name]
    raise KeyError(f"unknown loss {name!r}; known losses: {', '.join(all_names())}")


def names() -> list[str]:
    """The pairwise losses: those with the common signature, which can be summed in one run."""
    return sorted(_REGISTRY)


def all_names() -> list[str]:
    """Every loss the DPO stage can train with: pairwise, unpaired (kto) and listwise (plackett_luce)."""
    return sorted([*_REGISTRY, *UNPAIRED, *LISTWISE])


def kind(name: str) -> str:
    """'pairwise' (preference pairs), 'unpaired' (labelled single completions) or 'listwise' (rankings):
    which data layout the loss trains from."""
    get(name)  # unknown → KeyError
    return "unpaired" if name in UNPAIRED else "listwise" if name in LISTWISE else "pairwise"


def _keyword_only(name: str) -> set[str]:
    params = inspect.signature(get(name)).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def hyperparameters(name: str) -> set[str]:
    """Keyword-only hyperparameters (besides beta) the loss accepts, read from its signature.
    Completion lengths, KTO's ``kl`` and a ranking's ``mask`` are data, not hyperparameters."""
    return _keyword_only(name) - {"beta"} - DATA_ARGUMENTS


def needs_lengths(name: str) -> bool:
    """Whether the loss must be called with ``chosen_lengths=`` and ``rejected_lengths=`` (B,) tensors."""
    return bool(_keyword_only(name) & LENGTH_ARGUMENTS)
