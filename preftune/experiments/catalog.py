"""The methods the sentiment experiment compares, as data: name, label, colour, and the config key whose
values each get one run. How each is trained lives in :mod:`preftune.experiments.methods` (``TRAINERS``);
this table sits below the experiment's config, which validates ``methods`` and the sweep keys from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    color: str
    sweep_key: str       # config key: the values one run each is trained with
    symbol: str          # how the swept value is written in labels
    run_prefix: str      # run names: f"{name}_{run_prefix}{value:g}"
    online: bool         # samples its own completions (False: trains on the π_SFT pairs)


@dataclass(frozen=True)
class RunSpec:
    name: str    # e.g. dpo_beta0.1, ppo_gt_kl0.05
    method: str  # a key of METHODS
    beta: float  # the swept value: DPO/IPO/online-DPO β, PPO/RLOO KL coefficient, GRPO's β


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dpo", "DPO", "tab:blue", "dpo_betas", "β", "beta", False),
    Method("ipo", "IPO", "tab:cyan", "ipo_betas", "β", "beta", False),
    Method("ppo_gt", "PPO-GT (r*)", "tab:red", "ppo_kl_coefs", "KL coef", "kl", True),
    Method("ppo_rm", "PPO-RM (reward model)", "tab:orange", "ppo_kl_coefs", "KL coef", "kl", True),
    Method("rloo", "RLOO (r*)", "tab:purple", "rloo_kl_coefs", "KL coef", "kl", True),
    Method("grpo", "GRPO (r*)", "tab:green", "grpo_betas", "β", "beta", True),
    Method("online_dpo", "online DPO (r*)", "tab:brown", "online_dpo_betas", "β", "beta", True),
)}
