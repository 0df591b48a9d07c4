"""Exact tabular demonstrations of the theory behind DPO (docs/maths.md §tabular).

A world small enough to enumerate every completion (:mod:`.world`, :mod:`.tree`), preference data
(:mod:`.data`), tabular policies trained with the registered losses, REINFORCE and PPO (:mod:`.train`),
the GRPO family, REINFORCE++ and online DPO (:mod:`.grpo`) with the fixed points their expected
gradients predict (:mod:`.fixed_points`), the claims as checks (:mod:`.demos`, :mod:`.demos_grpo`) and a
markdown report (:mod:`.report`, ``preftune theory``).
"""

from preftune.theory.demos import Check, Settings, run_all
from preftune.theory.world import TabularWorld, kl, optimal_policy_from

# report (run_theory, main) is not imported here so that `python -m preftune.theory.report` runs cleanly.
__all__ = ["Check", "Settings", "TabularWorld", "kl", "optimal_policy_from", "run_all"]
