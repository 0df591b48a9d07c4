"""End-to-end experiments that reproduce the paper's claims (docs/maths.md §claims): ``preftune experiment <name>``.

- ``sentiment`` (:mod:`preftune.experiments.sentiment`): controlled sentiment generation on IMDb, the
  reward-vs-KL frontier of DPO, IPO, PPO (true reward and reward model) and best-of-N.
"""

EXPERIMENTS = ("sentiment",)
