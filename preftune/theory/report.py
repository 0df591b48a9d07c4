"""``preftune theory``: run every demonstration and write ``theory.md`` plus PNG plots.

    run_theory(out_dir, quick=False) -> Path to theory.md
    main(argv) -> exit code (0 when every check passes), for ``preftune theory [--out DIR] [--quick]``

Plots need matplotlib (Agg backend, no display); without it the markdown is still written and says so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from preftune.theory.demos import Check, DemoResult, Settings, run_all
from preftune.theory.demos_grpo import PI_STAR, VariantRow
from preftune.theory.world import TabularWorld

_KL_FLOOR = 1e-18  # log-scale plots cannot show an exact 0


def _plots(out: Path, world: TabularWorld, results: dict[str, DemoResult]) -> list[str]:
    """Write the PNGs; returns their file names (empty when matplotlib is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display on servers / CI
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    first, ul, ipo = results["same_optimum"].numbers, results["unlikelihood"].numbers, results["ipo_vs_dpo"].numbers
    sampled = results["sampled_rl"].numbers
    curves = {"DPO (sigmoid)": first["dpo"], "PPO (clipped, KL penalty)": first["ppo"],
              "REINFORCE (exact, baseline)": first["reinforce"], "unlikelihood": ul["ul"],
              "IPO (BT data)": ipo["ipo_bt"], "RLOO (sampled)": sampled["rloo"],
              "PPO (sampled, k1 in reward)": sampled["ppo_k1"], "PPO (sampled, k3 in reward)": sampled["ppo_k3"]}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, res in curves.items():
        kls = [max(v, _KL_FLOOR) for v in res.history["kl_to_target"]]
        ax.plot(res.history["step"], kls, label=label, ls="--" if "sampled" in label else "-")
    ax.set(yscale="log", xlabel="gradient step", ylabel="E_x KL(π_θ ‖ π*)",
           title="Distance to the closed-form optimum π* = π_ref e^{r*/β}/Z")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "kl_to_optimum.png", dpi=110)
    plt.close(fig)
    names.append("kl_to_optimum.png")

    th = results["theorem1"].numbers
    fig, ax = plt.subplots(figsize=(5, 5))
    for key, label, marker in (("r_hat", "population DPO", "o"), ("r_hat_sampled", "sampled DPO", "x")):
        diff = th[key] - world.reward
        shifted = th[key] - diff.mean(-1, keepdim=True)  # remove the per-prompt constant f(x)
        ax.scatter(world.reward.flatten(), shifted.flatten(), s=14, marker=marker, label=label)
    lo, hi = float(world.reward.min()), float(world.reward.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlabel="r*(x, y)", ylabel="β log π_θ/π_ref − f(x)", title="Theorem 1: recovered reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recovered_reward.png", dpi=110)
    plt.close(fig)
    names.append("recovered_reward.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for loss, label in (("sigmoid", "DPO"), ("ipo_sum", "IPO")):
        hist = ipo[loss]["result"].history
        ax.plot(hist["step"], hist["margin"], label=label)
    ax.axhline(ipo["target_margin"], color="k", ls="--", lw=1, label="1/(2β)")
    ax.set(xlabel="gradient step", ylabel="mean log-ratio margin h",
           title="Deterministic preferences: DPO pushes to the boundary, IPO settles")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ipo_vs_dpo_margin.png", dpi=110)
    plt.close(fig)
    names.append("ipo_vs_dpo_margin.png")
    if "grpo_family" in results:
        names.append(_grpo_plot(plt, out, results["grpo_family"].numbers["rows"]))
    return names


def _grpo_plot(plt, out: Path, rows: list[VariantRow]) -> str:
    """Two panels of E_x KL(π_θ ‖ π*): the variants that reach π*, and those that settle elsewhere, each
    with a dotted line at its predicted limit's KL to π*."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    groups = ([r for r in rows if r.limit_label == PI_STAR], [r for r in rows if r.limit_label != PI_STAR])
    titles = ("KL in the reward, online DPO (BT): → π*", "KL in the loss, β = 0, judged online DPO: elsewhere")
    for ax, group, title in zip(axes, groups, titles):
        for i, r in enumerate(group):
            hist = r.result.history
            kls = [max(v, _KL_FLOOR) for v in hist["kl_to_target"]]
            line, = ax.plot(hist["step"], kls, ls="--" if r.sampled else "-", lw=1.2,
                            label=f"{_short(r.name)} [{'sampled' if r.sampled else 'exact'}]",
                            color=plt.cm.tab20(i % 20))
            if r.limit_label != PI_STAR:
                ax.axhline(max(r.limit_kl_to_star, _KL_FLOOR), color=line.get_color(), ls=":", lw=1)
        ax.set(yscale="log", xlabel="gradient step", title=title)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel("E_x KL(π_θ ‖ π* of the row's r, β)   (dotted: the predicted limit)")
    fig.tight_layout()
    fig.savefig(out / "grpo_family.png", dpi=110)
    plt.close(fig)
    return "grpo_family.png"


def _short(name: str) -> str:
    return name.split(" (0/1")[0].split(", KL in the reward")[0].split(", k1 KL in the reward")[0][:60]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.2e}"


def _markdown(world: TabularWorld, s: Settings, results: dict[str, DemoResult], plots: list[str],
              seconds: float, quick: bool) -> str:
    checks: list[Check] = [c for r in results.values() for c in r.checks]
    n_pass = sum(c.passed for c in checks)
    first = results["same_optimum"].numbers
    lines = [
        "# DPO theory in an exact tabular world",
        "",
        f"{world.n_prompts} prompts × {world.tree.n} completions (all token sequences of length 1..."
        f"{world.tree.max_len} over {world.tree.vocab} tokens, EOS-terminated; log π(y|x) = Σ token log-probs), "
        f"β = {world.beta}, r* ~ N(0, 1) i.i.d., π_ref an autoregressive softmax with random logits. "
        f"Policies are one logit per (prompt, prefix, token), so π* is exactly representable.",
        "",
        f"Settings: {'quick' if quick else 'full'} — {s.steps} Adam steps (lr {s.lr}, cosine decay) for "
        f"preference losses and REINFORCE; PPO {s.ppo_iterations} × {s.ppo_epochs} epochs (lr {s.ppo_lr}, "
        f"ε = 0.2); finite-sample DPO on {s.sampled_n} Bradley–Terry pairs. Preference losses otherwise "
        "use the population pairs: every ordered (y1, y2) weighted by ρ(x) π_ref(y1) π_ref(y2) "
        "σ(r*(y1) − r*(y2)), the exact infinite-data loss. REINFORCE uses the exact expectation over all "
        "completions with baseline b(x) = E_π[r − β log π/π_ref]; PPO the exact expectation under π_old "
        "with a sequence-level ratio and the KL penalty in the reward. "
        f"Sampled RL (seed {s.seed}): RLOO with {s.rloo_samples} fresh completions per prompt per step "
        f"({s.rloo_steps} steps, lr {s.lr}, leave-one-out baseline, r − β log π/π_ref as reward); PPO with "
        f"{s.sampled_ppo_samples} completions per prompt from π_old per batch ({s.sampled_ppo_iterations} "
        f"batches × {s.ppo_epochs} epochs, lr {s.ppo_lr}), per-token KL estimate k1 or k3 in the reward, "
        "leave-one-out baseline, clipped surrogate, all from preftune.rl.",
        "",
        f"J(π_ref) = {_fmt(first['objective_ref'])}, J(π*) = {_fmt(first['objective_star'])}.",
        f"**{n_pass}/{len(checks)} checks pass**; run time {seconds:.1f} s.",
        "",
        "| demonstration | metric | value | threshold | result |",
        "|---|---|---|---|---|",
    ]
    for c in checks:
        metric = c.metric.replace("|", "\\|")  # a bare | would split the table cell
        lines.append(f"| {c.demo} | {metric} | {_fmt(c.value)} | {c.op} {_fmt(c.threshold)} | "
                     f"{'pass' if c.passed else '**FAIL**'} |")
    lines.append("")
    grpo_plot = [p for p in plots if p == "grpo_family.png"]
    if plots:
        lines += [f"![{p}]({p})" for p in plots if p not in grpo_plot]
    else:
        lines.append("(matplotlib is not installed: no plots; `pip install matplotlib`.)")
    if "grpo_family" in results:
        lines += ["", *_grpo_section(world, s, results["grpo_family"].numbers["rows"])]
        lines += [f"![{p}]({p})" for p in grpo_plot]
    return "\n".join(lines) + "\n"


GRPO_DERIVATIONS = """\
**Why.** Write R̃(y) = r(y) − β log π(y|x)/π_ref(y|x) and V(x) = E_π R̃.

* *KL in the reward.* At π*, R̃(y) = β log Z(x) for every y, so every group-centred advantage is exactly
  0 (and 0/(0 + 1e-4) = 0 under std scaling): π* is a fixed point of every surrogate (clip, clip-higher,
  GSPO's sequence ratio, CISPO's capped weight), every aggregation and any number of iterations per
  batch. Std scaling only rescales each prompt's gradient. Length normalisation (1/|y|) does not move it
  either: stationarity needs (R̃(y) − V)/|y| = c for all y, and E_π[R̃ − V] = 0 forces c = 0.
  REINFORCE++'s batch-wide baseline and std are constants per token. Online DPO with Bradley–Terry
  labels: the DPO loss on *any* full-support pair distribution is minimised at β log π/π_ref = r + f(x)
  (Theorem 1), so sampling the pairs from π_θ instead of π_ref leaves π* the fixed point.
* *KL in the loss, per token.* On samples from π, E∇k1 = 0 (no regulariser at all), E∇k2 = E∇(ρ·k3) =
  ∇KL(π(·|s) ‖ π_ref(·|s)) and E∇k3 = ∇KL(π_ref(·|s) ‖ π(·|s)), each token's *conditional* only: the
  KL of the tokens still to come never enters a token's value. The stationary conditionals are then,
  with Q_r(s, a) = E_π[f(y) | s, a] the advantage to go and W(s, a) the KL weight to go,
  π(a|s) ∝ π_ref(a|s) exp(Q_r(s, a)/(β W)) (reverse) or π(a|s) = β W π_ref(a|s)/(λ_s + β W − Q_r(s, a))
  (forward), solved by backward induction over the tree (`preftune/theory/fixed_points.py`); π* instead
  has the *soft* value, future KL included, in the exponent. They coincide only for one-token answers.
* *Scalings of the policy gradient but not of the KL term* move β: std scaling gives β(σ_π(x) + 1e-4),
  which shrinks as the policy concentrates (σ → 0), so the policy collapses; a finite group's mean
  includes the sample itself, E[(r_i − mean_G)∇log π(y_i)] = (G − 1)/G · E[(r_i − V)∇log π(y_i)], so
  β_eff = β G/(G − 1); GRPO's 1/|y| reweights both terms by length.
* *Dynamic sampling* drops all-equal groups. Their advantages are 0 anyway, but their KL terms are not:
  with a 0/1 reward and p = P_π(correct | x), completion y keeps its KL term with probability
  1 − p^{G−1} (y correct) or 1 − (1 − p)^{G−1} (y wrong), which weakens the regulariser exactly on the
  prompts the policy has (nearly) solved.
* *No regulariser* (β = 0, TRL's default; k1 in the loss; online DPO ranked by a deterministic judge,
  whose DPO margins have no finite optimum): the policy collapses onto one completion, argmax_y r when
  the exact gradient has time to find it (sampled groups stop learning once all G samples agree).
"""


def _grpo_section(world: TabularWorld, s: Settings, rows: list[VariantRow]) -> list[str]:
    lines = [
        "## The GRPO family, REINFORCE++ and online DPO: where each converges",
        "",
        f"Same world and β = {world.beta} (the 0/1-reward rows: correct iff r* is in the top 20% of the "
        f"prompt's completions, β = {s.binary_beta}). Every row starts at π_ref and reports the final "
        "policy's distance to π* of its own r and β, the objective gap J(π*) − J(π) (= β KL(π ‖ π*), "
        "Gibbs), the limit its expected gradient predicts and the distance to it (max over x, y of "
        "|π − π_limit|; for a point mass, max_x 1 − max_y π(y|x)). *Sampled* rows run the LM-scale code "
        "path: G completions per prompt from π_old, `preftune.rl.group_advantages` (dynamic sampling "
        "with `groups_with_signal` / `fill_batch`), `preftune.rl.grpo_loss` on the tokens' log-probs "
        f"({s.grpo_steps} Adam steps, lr {s.lr}; {s.grpo_multi_steps} steps, lr {s.ppo_lr} with 4 "
        "iterations per batch). *Exact* rows minimise the expected loss over every completion, weighted "
        f"by π_old, with the same per-token functions ({s.grpo_exact_steps} steps, lr {s.lr}). KL in the "
        "reward = k1 of the sampling policy summed over the completion; KL in the loss = β·kl_t per token "
        "(k3 × ρ is TRL's `use_bias_correction_kl`).",
        "",
        "| variant | estimate | KL(π ‖ π*) | J(π*) − J(π) | predicted limit | distance to it | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r.name.replace("|", "\\|")
        limit = r.limit_label.replace("|", "\\|")
        lines.append(f"| {name} | {r.estimate} | {_fmt(r.kl_to_star)} | {_fmt(r.objective_gap)} | {limit} | "
                     f"{_fmt(r.distance)} | {r.verdict} |")
    return lines + ["", GRPO_DERIVATIONS]


def write_report(out_dir: str | Path, world: TabularWorld, settings: Settings,
                 results: dict[str, DemoResult], seconds: float, quick: bool = False) -> Path:
    """Render already computed demonstrations into ``out_dir``/theory.md (+ PNGs); returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, world, results)
    path = out / "theory.md"
    path.write_text(_markdown(world, settings, results, plots, seconds, quick), encoding="utf-8")
    return path


def run_theory(out_dir: str | Path, quick: bool = False, seed: int = 0) -> Path:
    """Run every demonstration (quick: the test-sized settings) and write theory.md + plots into
    ``out_dir``; returns the markdown's path. The reported run time includes the plotting."""
    start = time.perf_counter()
    world = TabularWorld.make(seed=seed)
    s = Settings.quick() if quick else Settings()
    s.seed = seed
    results = run_all(world, s)
    # Plots first, so that the time written into the markdown covers them too.
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, world, results)
    path = out / "theory.md"
    path.write_text(_markdown(world, s, results, plots, time.perf_counter() - start, quick), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry: ``preftune theory [--out DIR] [--quick] [--seed N]``; exit 1 if a check fails."""
    parser = argparse.ArgumentParser(prog="preftune theory",
                                     description="Numerically demonstrate DPO's theory in an exact tabular world.")
    parser.add_argument("--out", default="theory", help="output folder (default: ./theory)")
    parser.add_argument("--quick", action="store_true", help="fewer steps (the test settings)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = run_theory(args.out, quick=args.quick, seed=args.seed)
    text = path.read_text(encoding="utf-8")
    print(f"wrote {path}")
    return 1 if "**FAIL**" in text else 0


if __name__ == "__main__":
    raise SystemExit(main())
