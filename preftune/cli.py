"""``preftune {demo,demo-grpo,sft,dpo,eval,rm,ppo,rloo,reinforce,grpo,online-dpo,theory,experiment,plot}``: parse the command line and call the stage; nothing else.

Every stage takes ``--config file.yaml`` plus settings written ``key=value``, ``--key value``,
``--key=value`` or ``--flag`` (a boolean set to true, as ``trl dpo --bf16``); ``preftune <stage> --help``
lists every key with its default and meaning. Under torchrun: ``torchrun --nproc_per_node 2 -m
preftune dpo ...``.
"""

from __future__ import annotations

import argparse
import sys

from preftune.config import COMMAND_CONFIGS, cli_overrides, describe
from preftune.config.parse import valued_keys
from preftune.errors import PreftuneError
from preftune.train.signals import RunInterrupted

STAGES = {  # each command that runs a stage, and what it does (its config: COMMAND_CONFIGS)
    "sft": "supervised fine-tuning on completions (builds π_ref when no SFT model exists)",
    "dpo": "Direct Preference Optimization (and any loss in preftune.losses)",
    "eval": "held-out implicit-reward accuracy and margin of a policy against its reference",
    "rm": "reward model: the LM with a scalar head, Bradley–Terry on pairs or Plackett–Luce on rankings",
    "ppo": "online RL with PPO: sample, score, KL penalty to π_ref, clipped surrogate + value head",
    "rloo": "online RL with RLOO: k samples per prompt, leave-one-out baseline, KL penalty to π_ref",
    "reinforce": "online RL with REINFORCE and a batch-mean baseline, KL penalty to π_ref",
    "grpo": "GRPO and its family (dapo, dr_grpo, bnpo, cispo, sapo, luspo; GSPO): group-relative "
            "advantages over num_generations samples per prompt, verifiable rewards or reward models",
    "online-dpo": "online DPO: two samples per prompt from the current policy, ranked by the "
                  "reward, a pairwise-loss step against the frozen reference",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="preftune", description="Preference alignment for language models.")
    sub = parser.add_subparsers(dest="stage", required=True,
                                metavar="{demo,demo-grpo,sft,dpo,eval,rm,ppo,rloo,reinforce,grpo,online-dpo,theory,experiment,plot}")
    sub.add_parser("demo", help="offline end-to-end DPO on SmolLM2-135M with IMDb preferences (< 10 min on CPU)",
                   formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                   epilog="Any DPO key may be overridden, e.g. `preftune demo max_steps=10 threads=1`.")
    sub.add_parser("demo-grpo", help="offline GRPO on SmolLM2-135M with the arithmetic task: held-out exact-match "
                                     "accuracy before and after, and its rise in standard errors",
                   formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                   epilog="Any GRPO key may be overridden, e.g. `preftune demo-grpo max_steps=10 threads=1`.")
    theory = sub.add_parser("theory", help="the exact tabular world: DPO, PPO and the paper's claims, checked "
                                          "numerically (markdown table + PNG plots, < 1 min on CPU)")
    theory.add_argument("--out", help="output folder (default ./theory); also --quick, --seed N")
    plot = sub.add_parser("plot", help="curves of one or more runs (loss, reward accuracy, margin, KL, lr, eval) "
                                       "from their metrics.jsonl, as PNG files; runs share the axes")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="folder for the PNGs (default RUN_DIR/plots for one run, ./plots for several)")
    from preftune.experiments.config import SentimentExperimentConfig

    experiment = sub.add_parser(
        "experiment", help="the paper's experiments end to end: `sentiment` = reward-vs-KL frontier of DPO, IPO, "
                           "PPO, RLOO and best-of-N on IMDb (CPU size ≈ 3 h, resumable in slices; --pilot sizes "
                           "it, --gpu for the larger one)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"keys (type) = default (the CPU size):\n{describe(SentimentExperimentConfig)}", allow_abbrev=False)
    experiment.add_argument("name", choices=["sentiment"], help="which experiment")
    experiment.add_argument("--config", help="YAML file of key: value settings")
    experiment.add_argument("--gpu", action="store_true", help="the GPU size (size=gpu: more prompts, samples "
                                                               "and steps, bf16)")
    experiment.add_argument("--pilot", action="store_true", help="the pilot (size=pilot, into <output_dir>/pilot): "
                                                                 "measures r*'s noise and each stage's CPU cost")
    experiment.add_argument("--until", metavar="STAGE", help="stop after this stage (e.g. sft, pairs, "
                                                             "dpo_beta0.1); rerun to continue")
    experiment.add_argument("--max-minutes", type=float, metavar="M", help="start no stage after M minutes; rerun "
                                                                          "to continue")
    for name, text in STAGES.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=f"settings (key=value or --key value) override the file; keys (type) = "
                                  f"default:\n{describe(COMMAND_CONFIGS[name])}", allow_abbrev=False)
        p.add_argument("--config", help="YAML file of key: value settings")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["theory"]:  # its own parser (preftune.theory.report) owns its options
        from preftune.theory.report import main as theory_main

        return theory_main(argv[1:])
    if argv[:1] == ["plot"]:  # its own parser (preftune.plot) owns its options
        from preftune.plot import main as plot_main

        return plot_main(argv[1:])
    # Settings are not argparse options: every key is a setting, in any spelling (see cli_overrides).
    args, settings = build_parser().parse_known_args(argv)
    try:
        stage_config = COMMAND_CONFIGS.get("dpo" if args.stage == "demo" else args.stage)
        args.overrides = cli_overrides(settings, valued_keys(stage_config) if stage_config else ())
        if args.stage == "demo":
            from preftune.demo import run_demo

            run_demo(args.overrides)
        elif args.stage == "demo-grpo":
            from preftune.demo_grpo import run_demo_grpo

            run_demo_grpo(args.overrides)
        elif args.stage == "sft":
            from preftune.stages.sft import main as stage
            stage(args.config, args.overrides)
        elif args.stage == "dpo":
            from preftune.stages.dpo import main as stage
            stage(args.config, args.overrides)
        elif args.stage == "eval":
            from preftune.stages.evaluate import main as stage
            stage(args.config, args.overrides)
        elif args.stage == "rm":
            from preftune.stages.reward_model import main as stage
            stage(args.config, args.overrides)
        elif args.stage == "experiment":
            from preftune.experiments.sentiment import main as experiment_main
            experiment_main(args.config, args.overrides, gpu=args.gpu, pilot=args.pilot, until=args.until,
                            max_minutes=args.max_minutes)
        elif args.stage in ("ppo", "rloo", "reinforce"):
            from preftune.stages.rl import main as stage
            stage(args.config, [f"algorithm={args.stage}", *args.overrides])
        elif args.stage == "grpo":
            from preftune.stages.grpo import main as stage
            stage(args.config, args.overrides)
        elif args.stage == "online-dpo":
            from preftune.stages.online_dpo import main as stage
            stage(args.config, args.overrides)
    except RunInterrupted as e:   # SIGTERM / SIGINT: a checkpoint is saved, say how to continue
        print(f"preftune {args.stage}: {e}", file=sys.stderr)
        return e.exit_code
    except PreftuneError as e:
        print(f"preftune {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:     # Ctrl-C before a run installed its handlers (while loading): nothing to save
        print(f"preftune {args.stage}: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
