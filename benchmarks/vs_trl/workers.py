"""Timing workers: each arm trains in its own fresh process (alternating TRL, preftune, ... across repeats), so
peak memory is per framework and neither inherits the other's allocator state.

The training phase is everything after the model and the data are loaded: the reference precompute, if
any, then every optimizer step; it ends at the last ``optimizer.step()`` (a global post-step hook, so both
frameworks are timed at the same point). Peak memory: on CPU the peak RSS of the worker during the phase
(VmHWM, reset at its start via /proc/self/clear_refs) and over the whole process; on GPU
``torch.cuda.max_memory_allocated`` over the same spans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vs_trl.frameworks import preftune_config, trl_config, trl_dataset, trl_trainer_class
from vs_trl.settings import Settings
from vs_trl.workload import preftune_order

SCRIPT = Path(__file__).resolve().parents[1] / "dpo_vs_trl.py"


def _rss_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _reset_rss_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class Recorder:
    """Training-phase start, every optimizer step's end (a global torch.optim post-step hook, so both
    frameworks are timed at the same point) and the memory peaks."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.steps, self.device = steps, device
        self.t_start: float | None = None
        self.t_reference_done: float | None = None
        self.step_ends: list[float] = []
        self.mem: dict[str, Any] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def start_phase(self) -> None:
        if self.t_start is not None:
            return
        self._sync()
        self.mem["load_peak_rss_mib"] = _rss_hwm_mib()
        self.mem["rss_peak_reset"] = _reset_rss_hwm()
        if self.device.type == "cuda":
            self.mem["load_peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        self.t_start = time.perf_counter()

    def reference_done(self) -> None:
        if self.t_reference_done is None:
            self._sync()
            self.t_reference_done = time.perf_counter()

    def on_step(self, *_: Any) -> None:
        self._sync()
        self.step_ends.append(time.perf_counter())
        if len(self.step_ends) == self.steps:
            self.mem["train_peak_rss_mib"] = _rss_hwm_mib()
            if self.device.type == "cuda":
                self.mem["train_peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(self.on_step)

    def summary(self) -> dict[str, Any]:
        load = self.mem.get("load_peak_rss_mib")
        train = self.mem.get("train_peak_rss_mib")
        out = dict(self.mem)
        out["process_peak_rss_mib"] = max(x for x in (load, train) if x is not None) if (load or train) else None
        if "load_peak_cuda_mib" in self.mem and "train_peak_cuda_mib" in self.mem:
            out["process_peak_cuda_mib"] = max(self.mem["load_peak_cuda_mib"], self.mem["train_peak_cuda_mib"])
        return {"t_start": self.t_start, "t_reference_done": self.t_reference_done, "step_ends": self.step_ends,
                "memory": out}


def worker_trl(s: Settings, rows: list[dict], workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    device = torch.device(s.device)
    rec = Recorder(s.steps, device)
    t0 = time.perf_counter()
    precompute = s.precompute("trl")
    trainer = trl_trainer_class()(
        model=s.model_dir, args=trl_config(s, str(workdir / "trl-out"), precompute=precompute),
        train_dataset=trl_dataset(rows), processing_class=AutoTokenizer.from_pretrained(s.model_dir),
        recorder=rec)
    rec.start_phase()  # no-op when the precompute already started the phase
    rec.install()
    setup = (rec.t_start or time.perf_counter()) - t0
    threads = torch.get_num_threads()
    trainer.train()
    micro = [(float(loss), int(n)) for loss, n in trainer.micro_records]
    return {"framework": "trl", "setup_s": setup, "threads": threads, "micro": micro,
            "reference": "precomputed before training" if precompute else "reference model run every step",
            **rec.summary()}


def worker_preftune(s: Settings, rows: list[dict], workdir: Path, arm: str = "preftune") -> dict[str, Any]:
    # A fresh cache: preftune caches precomputed reference log-probs on disk and must not reuse a
    # previous repeat's (the converted SmolLM2 folder is passed by path, not looked up in the cache).
    os.environ["PREFTUNE_CACHE"] = str(workdir / "preftune-cache")
    from preftune.stages import dpo as stage

    device = torch.device(s.device)
    rec = Recorder(s.steps, device)
    t0 = time.perf_counter()
    original = stage.build_reference

    def build_reference(*args: Any, **kwargs: Any):
        rec.start_phase()  # the first call is the train split's reference: the training phase starts here
        out = original(*args, **kwargs)
        rec.reference_done()
        return out

    stage.build_reference = build_reference
    rec.install()
    precompute = s.precompute(arm)
    try:
        result = stage.run_dpo(preftune_config(s, str(workdir / "preftune-out"), precompute=precompute, arm=arm),
                               train_data=preftune_order(rows, s))
    finally:
        stage.build_reference = original
    history = result.history
    seen = [0.0] + [h["tokens_seen"] for h in history]
    steps = [(h["loss"], int(seen[i + 1] - seen[i])) for i, h in enumerate(history)]
    return {"framework": arm, "setup_s": (rec.t_start or t0) - t0, "threads": torch.get_num_threads(),
            "steps": steps,
            "reference": "precomputed before training" if precompute else "reference model run every step",
            **rec.summary()}


def worker_main(framework: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    s = Settings(**spec["settings"])
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    with tempfile.TemporaryDirectory(prefix=f"dpo-{framework}-") as tmp:
        if framework == "trl":
            out = worker_trl(s, spec["rows"], Path(tmp))
        else:
            out = worker_preftune(s, spec["rows"], Path(tmp), framework)
        out["final_peak_rss_mib"] = _rss_hwm_mib()
    Path(result_path).write_text(json.dumps(out))


def run_worker(framework: str, spec_path: Path, workdir: Path, tag: str, script: Path = SCRIPT) -> dict[str, Any]:
    """Run ``script`` (dpo_vs_trl.py by default; grpo_vs_trl.py passes itself) as ``--worker framework``."""
    result_path = workdir / f"{tag}.json"
    log_path = workdir / f"{tag}.log"
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    threads = json.loads(spec_path.read_text())["settings"]["threads"]
    env.setdefault("OMP_NUM_THREADS", str(threads))
    cmd = [sys.executable, str(script), "--worker", framework, "--spec", str(spec_path),
           "--result", str(result_path)]
    t = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not result_path.exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{framework} worker failed (exit {proc.returncode}); log tail:\n{tail}")
    out = json.loads(result_path.read_text())
    out["process_s"] = time.perf_counter() - t
    # What preftune decided about its layout (e.g. "prefix sharing: on ..."), for the report.
    out["notes"] = sorted({line.removeprefix("[preftune] ").strip() for line in log_path.read_text().splitlines()
                           if line.startswith("[preftune] prefix sharing")})
    return out
