"""Random-SIGKILL and two-runs-one-folder trials on real ``python -m preftune`` processes (tiny models).

A correctness check, not a timing one: a loaded machine is fine. For each stage (dpo, sft, rm, ppo, rloo)
a tiny random Llama (attention dropout 0.2, so the RNG state matters) is trained once without
interruption; then trials kill runs of the same settings with SIGKILL — at random moments while it
trains, in the middle of a checkpoint save, right after a resume, between the last checkpoint and
``final/`` — and continue each with ``resume=latest`` (or ``overwrite_output_dir=true`` when no checkpoint
was written yet), until a run finishes. Every trial must end with bitwise the same final weights and the
same per-step metrics as the uninterrupted run, every checkpoint verifying, no temporary folder and no
lock left behind.

The folder trial starts two runs on one ``output_dir`` at once, starts a second run (fresh, and with
``resume=latest``) while a first is training, and a fresh run on a finished folder: exactly one run
may own a folder; the others must exit 2 naming the owner or what is there, and the owner must end as
an uninterrupted run would.

    python benchmarks/reliability_trial.py --out /tmp/trial --kills 7 --seed 0     # ≥ 30 kills in all
    python benchmarks/reliability_trial.py --out /tmp/trial --stages dpo --kills 2 --no-folder-trial

Prints one line per launch and a summary; writes ``<out>/trial.json``. Exit code 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preftune.train.checkpoint import list_checkpoints, verify_checkpoint  # noqa: E402
from preftune.train.metrics import read_metrics  # noqa: E402

TIMING_KEYS = {"time", "tokens_per_s", "generation_time_share"}
# (max_length: the offline stages; the online ones bound completions with max_new_tokens.)
# Dropout on and no recomputation (TRL's defaults turn dropout off): the RNG state a resume restores matters.
COMMON = ["max_prompt_length=16", "learning_rate=1e-3", "logging_steps=1", "progress_bar=false",
          "report_to=none", "threads=1", "seed=3", "save_steps=2", "save_total_limit=2", "disable_dropout=false",
          "gradient_checkpointing=false"]
STAGES = {  # stage → (CLI name, data kind, settings): 12 / 8 optimizer steps, a checkpoint every 2
    "dpo": ("dpo", "pairs", ["max_length=48", "per_device_train_batch_size=4", "gradient_accumulation_steps=2", "num_train_epochs=2"]),
    "sft": ("sft", "completions", ["max_length=48", "per_device_train_batch_size=4", "gradient_accumulation_steps=2",
                                   "num_train_epochs=2"]),
    "rm": ("rm", "pairs", ["max_length=48", "per_device_train_batch_size=4", "gradient_accumulation_steps=2", "num_train_epochs=2"]),
    "ppo": ("ppo", "prompts", ["per_device_train_batch_size=4", "max_new_tokens=6", "max_steps=8",
                               "ppo_epochs=2", "num_mini_batches=2"]),
    "rloo": ("rloo", "prompts", ["per_device_train_batch_size=4", "num_generations=2", "max_new_tokens=6",
                                 "max_steps=8"]),
}
STEPS = {"dpo": 12, "sft": 12, "rm": 12, "ppo": 8, "rloo": 8}
REWARD = "def letter_e(prompts, completions):\n    return [float(c.count('e')) for c in completions]\n"


def build_inputs(out: Path) -> dict[str, Path]:
    """A tiny model with dropout, the three data files and a reward function file."""
    from preftune.testing import tiny_llama, tiny_tokenizer

    model = out / "model"
    if not model.is_dir():
        tokenizer = tiny_tokenizer()
        tiny_llama(len(tokenizer), attention_dropout=0.2).save_pretrained(model)
        tokenizer.save_pretrained(model)
    rng = random.Random(5)
    good, bad = ["good", "great", "fine", "yes"], ["bad", "awful", "poor", "no"]
    pairs = [{"prompt": f"Review number {i}:", "chosen": " ".join(rng.choices(good, k=rng.randint(2, 5))),
              "rejected": " ".join(rng.choices(bad, k=rng.randint(2, 5)))} for i in range(48)]
    files = {"pairs": out / "pairs.jsonl", "completions": out / "completions.jsonl", "prompts": out / "prompts.jsonl"}
    files["pairs"].write_text("".join(json.dumps(r) + "\n" for r in pairs))
    files["completions"].write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n"
                                            for r in pairs))
    files["prompts"].write_text("".join(json.dumps({"prompt": f"Say something {i}:"}) + "\n" for i in range(32)))
    (out / "trial_rewards.py").write_text(REWARD)
    return {"model": model, **files, "reward": out / "trial_rewards.py"}


def command(stage: str, inputs: dict[str, Path], folder: Path, *extra: str) -> list[str]:
    cli, data, settings = STAGES[stage]
    cmd = [sys.executable, "-m", "preftune", cli, f"model_name_or_path={inputs['model']}",
           f"train_file={inputs[data]}", f"output_dir={folder}", *COMMON, *settings, *extra]
    if data == "prompts":
        cmd.append(f"reward={inputs['reward']}:letter_e")
    return cmd


def launch(cmd: list[str], cache: Path, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("PREFTUNE_FAULT", None)
    if fault:
        env["PREFTUNE_FAULT"] = fault
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def records(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []


def comparable(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records(folder)]


def weights(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "final").glob("*.safetensors"))}


def kill_randomly(proc: subprocess.Popen, folder: Path, rng: random.Random, started: float) -> bool:
    """SIGKILL ``proc`` at a random moment once it has written to its metrics log (opened it, resumed
    it, or logged a step); False if it finished first."""
    metrics = folder / "metrics.jsonl"
    while proc.poll() is None and not (metrics.is_file() and metrics.stat().st_mtime >= started):
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def pick_fault(stage: str, resume_step: int | None, rng: random.Random) -> tuple[str, str | None]:
    """(kind of kill, PREFTUNE_FAULT or None for a kill at a random moment), one that can still happen."""
    steps = STEPS[stage]
    saves = list(range((resume_step or 0) + 2, steps, 2))
    kinds = ["random", "before_final"] + (["in_save"] if saves else []) + (["after_resume"] if resume_step else [])
    kind = rng.choice(kinds)
    fault = {"random": None, "before_final": f"kill_before_final:{steps}",
             "in_save": f"kill_in_save:{rng.choice(saves)}" if saves else None,
             "after_resume": f"kill_after_resume:{resume_step}"}[kind]
    return kind, fault


def run_episode(stage: str, inputs: dict[str, Path], folder: Path, cache: Path, budget: int,
                rng: random.Random, log) -> dict:
    """Runs in ``folder``, each killed (up to ``budget`` times) and continued, until one finishes."""
    kills, launches = [], 0
    while True:
        ours = list_checkpoints(folder)
        resume_step = int(ours[-1].name.split("-")[1]) if ours else None
        extra = ["resume=latest"] if ours else (["overwrite_output_dir=true"] if folder.exists() else [])
        kind, fault = pick_fault(stage, resume_step, rng) if len(kills) < budget else (None, None)
        started = time.time()
        proc = launch(command(stage, inputs, folder, *extra), cache, fault)
        launches += 1
        what = "resume" if ours else "fresh"
        if kind == "random":
            killed = kill_randomly(proc, folder, rng, started)
        else:
            proc.wait()
            killed = proc.returncode == -signal.SIGKILL
        stdout, stderr = proc.communicate()
        if killed:
            kills.append(kind + (" (of a resumed run)" if ours else ""))
            log(f"  {stage}: launch {launches} ({what}) SIGKILL {kind}{': ' + fault if fault else ''}; "
                f"checkpoints now {[p.name for p in list_checkpoints(folder)]}")
            continue
        if proc.returncode != 0:
            return {"kills": kills, "launches": launches,
                    "problems": [f"launch {launches} exit {proc.returncode}: {(stderr or stdout)[-600:]}"]}
        log(f"  {stage}: launch {launches} ({what}) finished" + (f" before {kind} ({fault}) fired" if kind else ""))
        return {"kills": kills, "launches": launches}


def run_stage(stage: str, inputs: dict[str, Path], out: Path, cache: Path, reference: Path, kills: int,
              rng: random.Random, log) -> dict:
    """Episodes in fresh folders until ``kills`` SIGKILLs were spent; each ends checked against ``reference``."""
    episodes = []
    while sum(len(e["kills"]) for e in episodes) < kills and len(episodes) < 3 * kills:
        folder = out / f"{stage}-trial-{len(episodes) + 1}"
        budget = kills - sum(len(e["kills"]) for e in episodes)
        episode = run_episode(stage, inputs, folder, cache, budget, rng, log)
        episode["problems"] = episode.get("problems") or check_folder(folder, reference, STEPS[stage])
        episode["folder"] = folder.name
        episodes.append(episode)
    return {"episodes": episodes, "kills": [k for e in episodes for k in e["kills"]],
            "ok": all(not e["problems"] for e in episodes)}


def check_folder(folder: Path, reference: Path, steps: int) -> list[str]:
    problems = []
    if weights(folder) != weights(reference):
        problems.append("final weights differ from the uninterrupted run")
    if comparable(folder) != comparable(reference):
        problems.append("per-step metrics differ from the uninterrupted run")
    train = [r["step"] for r in records(folder) if r["split"] == "train"]
    if train != list(range(1, steps + 1)):
        problems.append(f"train records {train}")
    problems += [f"{p.name}: {why}" for p in list_checkpoints(folder) if (why := verify_checkpoint(p))]
    problems += [f"left behind: {p.name}" for p in [*folder.glob(".checkpoint-*.tmp"), folder / ".preftune.lock"]
                 if p.exists()]
    return problems


def folder_trial(inputs: dict[str, Path], out: Path, reference: Path, log) -> dict:
    """Two runs on one folder, in every order that matters; returns the outcomes."""
    cache, outcomes = out / "cache-dpo", {}

    def expect(name: str, ok: bool, detail: str) -> None:
        outcomes[name] = {"ok": ok, "detail": detail}
        log(f"  folder: {name}: {'ok' if ok else 'FAILED'} — {detail}")

    same = out / "folder-together"
    procs = [launch(command("dpo", inputs, same), cache) for _ in range(2)]
    results = [(p, *p.communicate()) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    winner = next((p for p, _, _ in results if p.returncode == 0), None)
    refused = [e for p, _, e in results if p.returncode == 2]
    good = codes == [0, 2] and winner is not None and f"in use by PID {winner.pid}" in refused[0]
    problems = check_folder(same, reference, STEPS["dpo"]) if good else []
    expect("two fresh runs started together", good and not problems,
           f"exit codes {codes}; {refused[0].strip().splitlines()[-1][:160] if refused else ''} {problems or ''}")

    busy = out / "folder-busy"
    first = launch(command("dpo", inputs, busy), cache, fault="pause_after_step:3")
    while not any(r["step"] >= 3 for r in records(busy)) and first.poll() is None:
        time.sleep(0.05)
    late = [launch(command("dpo", inputs, busy, *extra), cache) for extra in ([], ["resume=latest"])]
    late_results = [(p.wait(), p.communicate()[1]) for p in late]
    first.send_signal(signal.SIGTERM)                   # the first one stops cleanly at step 3 ...
    first.communicate()
    resumed = launch(command("dpo", inputs, busy, "resume=latest"), cache)   # ... and is continued
    resumed.communicate()
    refused_ok = all(code == 2 and f"in use by PID {first.pid}" in err for code, err in late_results)
    problems = check_folder(busy, reference, STEPS["dpo"]) if resumed.returncode == 0 else ["resume failed"]
    expect("a second run (fresh, and resume=latest) while one is training", refused_ok and not problems,
           f"late exit codes {[c for c, _ in late_results]}; first stopped by SIGTERM with exit {first.returncode}, "
           f"resumed to the end with exit {resumed.returncode} {problems or ''}")

    fresh = launch(command("dpo", inputs, same), cache)
    _, err = fresh.communicate()
    again = launch(command("dpo", inputs, same, "overwrite_output_dir=true"), cache)
    again.communicate()
    moved = list(out.glob("folder-together.previous-*"))
    kept = len(moved) == 1 and weights(moved[0]) == weights(reference)
    expect("a fresh run in a finished run's folder", fresh.returncode == 2 and "already holds another run" in err
           and again.returncode == 0 and kept,
           f"refused with exit {fresh.returncode}; overwrite_output_dir=true exit {again.returncode}, the earlier "
           f"run moved to {moved[0].name if moved else None} intact: {kept}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (created; its contents replaced)")
    parser.add_argument("--stages", default="dpo,sft,rm,ppo,rloo")
    parser.add_argument("--kills", type=int, default=7, help="SIGKILLs per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-folder-trial", action="store_true")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(args.seed)
    inputs = build_inputs(out)
    summary: dict = {"stages": {}, "folder": None}
    started = time.time()
    for stage in args.stages.split(","):
        cache = out / f"cache-{stage}"
        reference = out / f"{stage}-uninterrupted"
        proc = launch(command(stage, inputs, reference), cache)
        _, err = proc.communicate()
        if proc.returncode != 0:
            print(f"{stage}: the uninterrupted run failed:\n{err[-2000:]}")
            return 1
        print(f"{stage}: uninterrupted run done ({len(records(reference))} metrics records)", flush=True)
        result = run_stage(stage, inputs, out, cache, reference, args.kills, rng, lambda m: print(m, flush=True))
        summary["stages"][stage] = result
        problems = [p for e in result["episodes"] for p in e["problems"]]
        print(f"{stage}: {'OK' if result['ok'] else 'FAILED'} — {len(result['kills'])} kills in "
              f"{len(result['episodes'])} episode(s), each ended bitwise equal to the uninterrupted run"
              if result["ok"] else f"{stage}: FAILED — {problems}", flush=True)
    if not args.no_folder_trial:
        reference = out / "dpo-uninterrupted"
        if not reference.is_dir():
            launch(command("dpo", inputs, reference), out / "cache-dpo").communicate()
        summary["folder"] = folder_trial(inputs, out, reference, lambda m: print(m, flush=True))
    kills = [k for r in summary["stages"].values() for k in r["kills"]]
    summary["totals"] = {"kills": len(kills), "in_save": sum("in_save" in k for k in kills),
                         "after_resume": sum("after_resume" in k for k in kills),
                         "of_a_resumed_run": sum("resumed run" in k for k in kills),
                         "before_final": sum("before_final" in k for k in kills),
                         "random": sum(k.startswith("random") for k in kills),
                         "minutes": round((time.time() - started) / 60, 1)}
    ok = all(r["ok"] for r in summary["stages"].values()) and all(
        o["ok"] for o in (summary["folder"] or {}).values())
    summary["ok"] = ok
    (out / "trial.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["totals"]), "— all checks passed" if ok else "— SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
