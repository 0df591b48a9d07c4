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
    return names


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
    if plots:
        lines += [f"![{p}]({p})" for p in plots]
    else:
        lines.append("(matplotlib is not installed: no plots; `pip install matplotlib`.)")
    return "\n".join(lines) + "\n"


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
