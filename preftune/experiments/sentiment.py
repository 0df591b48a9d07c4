"""``preftune experiment sentiment``: the DPO paper's controlled-sentiment experiment (§6.1), offline.

    prompts   IMDb review prefixes of 2–8 words (train / held-out), from reviews nobody else uses
    rstar     r* = P(positive) of a TF-IDF + logistic-regression classifier on the remaining reviews
    sft       π_SFT: the base model fine-tuned to continue IMDb reviews (other reviews again)
    pairs     k samples of π_SFT per train prompt, scored by r*, turned into preference pairs
    point_sft π_SFT measured on the held-out prompts (the origin of every curve)
    bon       best-of-N from π_SFT for each N (analytic KL)
    rm        a reward model trained on the pairs (for PPO-RM)
    <runs>    one run per method and swept value (:mod:`preftune.experiments.methods`: DPO and IPO per β,
              PPO with r* and with the reward model and RLOO per KL coefficient, GRPO and online DPO
              (pairs of its own samples judged by r*) per β), all on the same
              budget of gradient sequences; every checkpoint is measured on the held-out prompts: r* and
              KL(π ‖ π_SFT) of the same samples, kept per prompt (:mod:`preftune.experiments.sampling`)
    outputs   points.csv, frontier.png, training.png, report.md (the verdict per KL bin with paired
              bootstrap standard errors, win rates, the power calculation: :mod:`preftune.experiments.report`)

Each stage writes into ``<output_dir>/<stage>/`` and, last, a ``done.json`` (with its wall and CPU
seconds); a rerun skips stages whose marker exists (an interrupted training run resumes from its latest
checkpoint; interrupted sampling continues from its last finished batch; each measured checkpoint is
kept as its own JSON). ``until`` / ``max_minutes`` stop after a given stage or once a time is spent, so
the run can be done in slices; every invocation rewrites the outputs from whatever is done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from preftune.config import load_config, to_dict
from preftune.data.dataset import DataSettings
from preftune.data.prompts import build_prompt_dataset
from preftune.errors import ConfigError
from preftune.experiments import frontier, groundwork, report, rstar, sampling
from preftune.experiments.config import SentimentExperimentConfig, load_experiment_config, pilot_of
from preftune.experiments.io import read_json, write_json
from preftune.experiments.methods import METHODS, TRAINERS, RunSpec, budget, run_specs
from preftune.modeling.load import freeze, load_causal_lm, load_tokenizer, pick_device
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.rewards import load_reward
from preftune.train.checkpoint import list_checkpoints

RSTAR_SPEC = "preftune.experiments.rstar:positive_probability"
# The stages' settings this experiment was designed with (preftune's defaults before TRL's became them).
STAGE_SETTINGS = {"max_grad_norm": 10.0, "logging_steps": 1, "gradient_checkpointing": False, "optim": "adamw_torch",
                  "disable_dropout": False}
RESERVED = ("output_dir", "overwrite_output_dir", "model_name_or_path", "train_file", "eval_file", "resume",
            "save_steps", "save_total_limit", "max_steps", "num_train_epochs", "reward", "ref_model_name_or_path")
# Keys a rerun may change without invalidating finished stages (they add runs or change nothing measured).
ADDITIVE = ("methods", *{m.sweep_key for m in METHODS.values()}, "best_of_n", "threads", "progress_bar",
            "report_to", "keep_checkpoints", "device", "output_dir", "size", "bootstrap", "run_pilot")
EVAL_SEED = 7919


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


class Stopped(Exception):
    """A stage stopped at the run's deadline (``max_minutes``) before it was done."""


class SentimentExperiment:
    """The pipeline; :meth:`run` does every stage not done yet and returns the points."""

    def __init__(self, cfg: SentimentExperimentConfig, log: Callable[[str], object] | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.log = log or (lambda m: print(f"[experiment] {m}", flush=True))
        self.device = pick_device(cfg.device)
        self.timings: dict[str, dict[str, Any]] = {}
        self.deadline: float | None = None
        self._reference: SequenceLogprobModel | None = None
        self._tokenizer: Any = None
        self._reward_fn: Any = None

    # -- stage bookkeeping -----------------------------------------------------------------------------

    def stage(self, name: str, folder: Path, body: Callable[[], dict]) -> dict:
        """Run ``body`` unless ``folder/done.json`` exists; the marker (payload + seconds) is written last."""
        marker = folder / "done.json"
        if marker.is_file():
            payload = read_json(marker)
            self.timings[name] = {"seconds": payload.get("seconds", 0.0), "skipped": True}
            self.log(f"↷ {name}: done before ({payload.get('seconds', 0.0):.1f}s), skipped")
            return payload
        self.log(f"▶ {name}")
        started, cpu = time.perf_counter(), time.process_time()
        folder.mkdir(parents=True, exist_ok=True)
        payload = body()
        # CPU seconds of this process (all its threads): on a shared machine the wall clock measures the
        # neighbours too; CPU time / threads is what the stage would take on quiet cores.
        payload.update(seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu)
        write_json(marker, payload)
        self.timings[name] = {"seconds": payload["seconds"], "skipped": False}
        self.log(f"✓ {name} ({payload['seconds']:.1f}s, {payload['cpu_seconds']:.0f} CPU s)")
        return payload

    def check_settings(self) -> None:
        """A rerun into the same folder must not silently mix results made with other settings."""
        now = {k: v for k, v in to_dict(self.cfg).items() if k not in ADDITIVE}
        path = self.out / "experiment.json"
        if path.is_file():
            # A key newer than the folder's results compares as its default: new keys keep the old behaviour.
            defaults = to_dict(SentimentExperimentConfig())
            before = {**{k: defaults[k] for k in now}, **read_json(path)["settings"]}
            changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
            if changed:
                k = changed[0]
                raise ConfigError(f"{self.out} holds results made with other settings ({k}: {before.get(k)!r} -> "
                                  f"{now.get(k)!r}); use another output_dir, or delete {self.out} to start over")
        else:
            write_json(path, {"settings": now})

    def stage_config(self, cls: type, values: dict[str, Any], extra: list[str]) -> Any:
        given = {item.partition("=")[0].strip() for item in extra}
        reserved = sorted(given & set(RESERVED))
        if reserved:
            raise ConfigError(f"{cls.__name__} key {reserved[0]!r} is set by the experiment; it cannot be overridden")
        cfg = self.cfg
        common = {"seed": cfg.seed, "threads": cfg.threads, "device": cfg.device, "bf16": cfg.bf16,
                  "progress_bar": cfg.progress_bar, "report_to": cfg.report_to, "use_chat_template": False,
                  "max_prompt_length": cfg.max_prompt_length, "save_total_limit": None, **STAGE_SETTINGS}
        merged = {**common, **values}
        return load_config(cls, None, extra, **{k: v for k, v in merged.items() if k not in given})

    @staticmethod
    def with_steps(stage_cfg: Any, max_steps: int, save_steps: int) -> Any:
        """A stage config that stops after ``max_steps`` and saves (a point to measure) every ``save_steps``."""
        return dataclasses.replace(stage_cfg, max_steps=max_steps, save_steps=save_steps)

    def prune(self, folder: Path) -> None:
        """Checkpoints (weights + optimizer state) are only needed to resume or measure: once a stage is
        done, ``final/`` is what later stages read."""
        if not self.cfg.keep_checkpoints:
            for path in list_checkpoints(folder):
                shutil.rmtree(path, ignore_errors=True)

    # -- shared objects --------------------------------------------------------------------------------

    @property
    def sft_dir(self) -> Path:
        return self.out / "sft" / "final"

    def reward_fn(self):
        if self._reward_fn is None:
            self._reward_fn = load_reward(self.reward_spec())
        return self._reward_fn

    def reward_spec(self) -> str:
        if self.cfg.reward == "classifier":
            os.environ[rstar.ENV] = str((self.out / "rstar" / "classifier.npz").resolve())
            return RSTAR_SPEC
        return self.cfg.reward

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(str(self.sft_dir))
        return self._tokenizer

    def reference(self) -> SequenceLogprobModel:
        if self._reference is None:
            self._reference = SequenceLogprobModel(freeze(load_causal_lm(str(self.sft_dir), self.device)))
        return self._reference

    def prompts(self, split: str):
        rows = [json.loads(line) for line in (self.out / "prompts" / f"{split}.jsonl").read_text().splitlines()]
        settings = DataSettings(max_length=self.cfg.max_prompt_length + self.cfg.max_new_tokens,
                                max_prompt_length=self.cfg.max_prompt_length, use_chat_template=False)
        return build_prompt_dataset([{"prompt": r["prompt"]} for r in rows], self.tokenizer(), settings).examples

    def sample(self, model, prompts, k: int, seed: int, desc: str, with_kl: bool) -> sampling.Samples:
        from tqdm.auto import tqdm

        with tqdm(total=len(prompts) * k, desc=desc, unit="sample", disable=not self.cfg.progress_bar,
                  dynamic_ncols=True, mininterval=0.5) as bar:
            return sampling.sample(model, self.tokenizer(), prompts, k, self.reward_fn(),
                                   max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.generation_batch_size,
                                   seed=seed, device=self.device, bf16=self.cfg.bf16,
                                   reference=self.reference() if with_kl else None, progress=bar)

    def measure(self, model_dir: Path, desc: str) -> dict[str, Any]:
        """A point: sample the held-out prompts with the policy at ``model_dir``; mean r*, KL to π_SFT, and
        both per prompt and sample (``rewards``, ``kls``: what the paired verdicts and win rates use)."""
        model = sampling.load_policy_folder(model_dir, self.sft_dir, self.device)
        s = self.sample(model, self.prompts("eval"), self.cfg.eval_samples_per_prompt, EVAL_SEED + self.cfg.seed, desc,
                        True)
        del model
        return {**sampling.point_metrics(s), "rewards": s.rewards, "kls": s.kl}

    # -- the stages ------------------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, Path, Callable[[], dict]]]:
        """Every stage of this configuration, in order: (name, folder, body)."""
        cfg, out = self.cfg, self.out
        stages = [("pilot", out / "pilot", self.make_pilot)] if cfg.run_pilot else []
        stages += [(name, out / name, lambda f=body: f(self)) for name, body in (
            ("prompts", groundwork.make_prompts), ("rstar", groundwork.make_rstar), ("sft", groundwork.make_sft),
            ("pairs", groundwork.make_pairs))]
        stages.append(("point_sft", out / "point_sft", lambda: self.measure(self.sft_dir, "π_SFT")))
        if "bon" in cfg.methods:
            stages.append(("bon", out / "bon", lambda: groundwork.make_best_of_n(self)))
        if "ppo_rm" in cfg.methods:
            stages.append(("rm", out / "rm", lambda: groundwork.make_reward_model(self)))
        stages += [(spec.name, out / "runs" / spec.name, lambda s=spec: self.make_run(s)) for spec in run_specs(cfg)]
        return stages

    def run(self, until: str | None = None, max_minutes: float | None = None) -> list[frontier.Point]:
        """Every stage not done yet (up to and including ``until``; none started after ``max_minutes``),
        then the outputs from whatever is done."""
        cfg = self.cfg
        started = time.perf_counter()
        stages = self.plan()
        if until is not None and until not in [name for name, _, _ in stages]:
            raise ConfigError(f"until: no stage {until!r} in this configuration; its stages: "
                              f"{', '.join(name for name, _, _ in stages)}")
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_settings()
        write_json(self.out / "config.json", to_dict(cfg))  # this invocation's full settings (the report reads it)
        self.log(f"controlled sentiment ({cfg.size} size) · methods {', '.join(cfg.methods)} · output {self.out}")
        bon = self.out / "bon" / "done.json"
        if bon.is_file() and read_json(bon)["samples"] < max(cfg.best_of_n, default=1):
            bon.unlink()  # more samples needed for a larger N
        self.deadline = None if max_minutes is None else started + 60 * max_minutes
        for name, folder, body in stages:
            spent = (time.perf_counter() - started) / 60
            if max_minutes is not None and spent >= max_minutes and not (folder / "done.json").is_file():
                self.log(f"stopping before {name}: {spent:.1f} of max {max_minutes:g} minutes spent; rerun the same "
                         "command to continue")
                break
            try:
                self.stage(name, folder, body)
            except Stopped:
                break
            if name == until:
                break
        if not (self.out / "point_sft" / "done.json").is_file():
            self.log("no outputs yet: π_SFT's point (stage point_sft) is not measured")
            return []
        points, values = self.collect_points()
        report.write_outputs(self, points, values, time.perf_counter() - started)
        self.log(f"outputs: {self.out / 'report.md'} · {self.out / 'frontier.png'} · {self.out / 'points.csv'}")
        return points

    def make_pilot(self) -> dict:
        """The pilot, as a nested experiment in ``pilot/`` (resumable like this one); it stops with this run's
        deadline, and then this stage is not done."""
        left = None if self.deadline is None else max(0.0, (self.deadline - time.perf_counter()) / 60)
        pilot = SentimentExperiment(pilot_of(self.cfg), log=lambda m: self.log(f"pilot: {m}"))
        pilot.run(max_minutes=left)
        missing = [name for name, folder, _ in pilot.plan() if not (folder / "done.json").is_file()]
        if missing:
            raise Stopped
        return {"stages": len(pilot.plan())}

    def make_run(self, spec: RunSpec) -> dict:
        """Train (resuming if interrupted) on the common budget, then measure every checkpoint; each point is
        cached on its own."""
        folder = self.out / "runs" / spec.name
        trained = folder / "trained.json"
        if not trained.is_file():
            started, cpu = time.perf_counter(), time.process_time()
            resumed_at = max((step_of(p) for p in list_checkpoints(folder)), default=0)
            sequences = TRAINERS[spec.method](self, spec, folder, budget(self.cfg, self.num_pairs()))
            steps = [step_of(p) for p in list_checkpoints(folder)]
            # This invocation's time covers the steps after resumed_at only (the cost model scales by it).
            write_json(trained, {"steps": steps, "gradient_sequences": sequences, "resumed_at": resumed_at,
                                 "train_seconds": time.perf_counter() - started,
                                 "train_cpu_seconds": time.process_time() - cpu})
        info = read_json(trained)
        points = {}
        for step in info["steps"]:
            cached = folder / "points" / f"step-{step}.json"
            if not cached.is_file():
                model_dir = folder / f"checkpoint-{step}" / "model"
                if not model_dir.is_dir() and step == info["steps"][-1]:
                    model_dir = folder / "final"  # the last checkpoint's weights
                if not model_dir.is_dir():
                    raise FileNotFoundError(f"{model_dir} is gone (checkpoints are deleted once measured; "
                                            f"keep_checkpoints=true keeps them): delete {folder} to train it again")
                metrics = self.measure(model_dir, f"{spec.name} @ {step}")
                write_json(cached, metrics)
                self.log(f"point {spec.name} @ step {step}: r* {metrics['reward']:.4f} ± {metrics['reward_sem']:.4f}"
                         f" · KL {metrics['kl']:.3f} ± {metrics['kl_sem']:.3f}")
            points[str(step)] = {k: v for k, v in read_json(cached).items() if k not in ("rewards", "kls")}
        self.prune(folder)
        return {"method": spec.method, "beta": spec.beta, "points": points, **info}

    def num_pairs(self) -> int:
        return int(read_json(self.out / "pairs" / "done.json")["pairs"])

    # -- points ----------------------------------------------------------------------------------------

    def collect_points(self) -> tuple[list[frontier.Point], dict[tuple[str, int], sampling.PromptValues]]:
        """Every measured point (finished stages only) and, per (run, step), its per-prompt samples."""
        nan = float("nan")
        sft = read_json(self.out / "point_sft" / "done.json")
        base = sampling.PromptValues(sft["rewards"], sft["kls"])
        values = {("sft", 0): base}
        points = [frontier.Point("sft", "sft", nan, 0, sft["reward"], sft["reward_sem"], sft["kl"], sft["kl_sem"],
                                 sft["n"], 0.5, 0.0)]
        bon = self.out / "bon" / "done.json"
        if "bon" in self.cfg.methods and bon.is_file():
            for n, m in read_json(bon)["points"].items():
                if int(n) in self.cfg.best_of_n:
                    points.append(frontier.Point("bon", "bon", nan, int(n), m["reward"], m["reward_sem"], m["kl"],
                                                 m["kl_sem"], m["n"]))
        for spec in run_specs(self.cfg):
            folder = self.out / "runs" / spec.name
            if not (folder / "done.json").is_file():
                continue
            for step, m in sorted(read_json(folder / "done.json")["points"].items(), key=lambda kv: int(kv[0])):
                full = read_json(folder / "points" / f"step-{step}.json")
                v = values[(spec.name, int(step))] = sampling.PromptValues(full["rewards"], full["kls"])
                win, win_sem = sampling.win_rate(v.rewards, base.rewards)
                points.append(frontier.Point(spec.method, spec.name, spec.beta, int(step), m["reward"],
                                             m["reward_sem"], m["kl"], m["kl_sem"], m["n"], win, win_sem))
        return points, values


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = (), *, gpu: bool = False,
         pilot: bool = False, until: str | None = None, max_minutes: float | None = None) -> list[frontier.Point]:
    cfg = load_experiment_config(config_path, overrides, gpu=gpu, pilot=pilot)
    return SentimentExperiment(cfg).run(until=until, max_minutes=max_minutes)
