"""The preference-loss group (dpo and eval): which losses and their hyperparameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from preftune.config.fields import Problems, default_of, setting

# Keys every loss reads; every other key of LossGroup belongs to the losses whose registry entry names it
# (``losses.hyperparameters``), and setting it while none of them is chosen is an error.
APPLIES_TO_EVERY_LOSS = ("beta", "loss_type", "loss_weights")


@dataclass(frozen=True)
class LossGroup:
    """The preference loss(es) and their hyperparameters; names and defaults as in TRL's DPOConfig."""

    beta: float = setting(0.1, "β: strength of the KL constraint to the reference (the DPO paper: 0.1).")
    loss_type: list[str] = setting(["sigmoid"], "Loss name(s) from preftune.losses (sigmoid = DPO, ipo = TRL's "
                                                "per-token IPO, ipo_sum = the paper's summed IPO, hinge, robust, sft, "
                                                "simpo, orpo, ...); a list is summed with loss_weights. kto "
                                                "trains from unpaired {prompt, completion, label} data, plackett_luce "
                                                "from {prompt, completions: [best, ..., worst]} rankings; both alone.")
    loss_weights: list[float] | None = setting(None, "One weight per loss_type entry (null = all 1).")
    label_smoothing: float = setting(0.0, "cDPO / robust / exo_pair: assumed probability a label is flipped, in "
                                          "[0, 0.5).")
    f_divergence_type: str = setting("reverse_kl", "Divergence that forms the log-ratio (f-DPO): reverse_kl, "
                                                   "forward_kl, js_divergence or alpha_divergence.",
                                     choices=("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"))
    f_alpha_divergence_coef: float = setting(0.5, "α of alpha_divergence.")
    discopop_tau: float = setting(0.05, "τ of the discopop loss.")
    bco_delta: float = setting(0.0, "Reward shift δ of bco_pair.")
    simpo_gamma: float = setting(0.5, "Target margin γ of simpo.")
    orpo_alpha: float = setting(0.1, "Weight λ of the odds-ratio term in orpo.")
    desirable_weight: float = setting(1.0, "kto: λ_D, weight of desirable examples (the paper: keep λ_D·n_D / "
                                           "(λ_U·n_U) in [1, 4/3]).")
    undesirable_weight: float = setting(1.0, "kto: λ_U, weight of undesirable examples.")
    rpo_alpha: float | None = setting(None, "RPO: add rpo_alpha × the sft term (NLL of the chosen completions, "
                                            "token mean over the batch), as loss_type [..., sft] with that weight "
                                            "would (TRL 1.16's form).")
    ld_alpha: float | None = setting(None, "LD-DPO: weight in [0, 1] of the tokens past the shorter completion's "
                                           "length, in π_θ's and π_ref's log-probs (null = 1, plain sums).")
    use_weighting: bool = setting(False, "WPO: weight each pair's loss by w(y_w)·w(y_l), w = exp(mean over the "
                                         "completion of log p(y_t) − log Σ_v p_v²) under the policy, detached.")

    def check(self, p: Problems) -> None:
        from preftune import losses

        p.positive(self, "beta", "desirable_weight", "undesirable_weight", "discopop_tau")
        p.in_range(self, "label_smoothing", "[0, 0.5)")
        p.non_negative(self, "simpo_gamma", "orpo_alpha")
        p.in_range(self, "ld_alpha", "[0, 1]")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            p.add(f"rpo_alpha must be >= 0 or null, got {self.rpo_alpha}", "rpo_alpha")
        if "loss_type" in p.bad:
            return
        if not self.loss_type:
            p.add("loss_type must name at least one loss")
            return
        unknown = [n for n in self.loss_type if n not in losses.all_names()]
        for name in unknown:
            p.add(f"loss_type: unknown loss {name!r}; known: {', '.join(losses.all_names())}")
        if unknown:
            return
        kinds = {losses.kind(n) for n in self.loss_type}
        if kinds != {"pairwise"} and len(self.loss_type) > 1:
            p.add(f"loss_type {self.loss_type}: kto and plackett_luce train from their own data layouts (unpaired "
                  "labels, rankings), so they cannot be combined with other losses")
        weights = self.loss_weights
        if weights is not None and "loss_weights" not in p.bad:
            for i, weight in enumerate(weights):
                if weight < 0:
                    p.add(f"loss_weights[{i}] must be >= 0, got {weight}")
            if weights and all(w >= 0 for w in weights) and not sum(weights) > 0:
                p.add(f"loss_weights must have a sum > 0, got {weights}")
            if len(weights) != len(self.loss_type):
                p.add(f"loss_weights has {len(weights)} entries but loss_type has {len(self.loss_type)}")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            p.add("loss_type exo_pair needs label_smoothing > 0 (its ε; e.g. 1e-3)")
        batch_sorted = sorted(set(self.loss_type) & losses.BATCH_SORTED)
        if self.use_weighting and batch_sorted:
            p.add(f"use_weighting cannot weight {', '.join(batch_sorted)}: it sorts the batch, so its entry i is a "
                  "quantile, not pair i (TRL refuses this too)", "use_weighting")
        used = set().union(*(losses.hyperparameters(n) for n in self.loss_type))
        if kinds == {"pairwise"}:  # the pairwise objective applies these around the losses
            used |= {"rpo_alpha", "use_weighting"}
            if set(self.loss_type) - losses.PLAIN_LIKELIHOOD:  # LD-DPO reweights what margin losses see
                used.add("ld_alpha")
        for f in dataclasses.fields(LossGroup):
            if f.name in APPLIES_TO_EVERY_LOSS or f.name in used:
                continue
            if getattr(self, f.name) != default_of(self, f.name):
                p.add(f"{f.name} is set but none of loss_type {self.loss_type} uses it", f.name)
