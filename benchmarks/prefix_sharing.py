"""Prefix sharing on its own, before / after: the reference precompute and the scoring of RL groups.

    python benchmarks/prefix_sharing.py reference --model smollm2 --pairs 64 --batch 8 --max-length 1024 --repeats 2
    python benchmarks/prefix_sharing.py groups --model smollm2 --prompts 4 --group 4 --batch 1 --max-length 1024 --repeats 2

``reference``: the DPO stage's reference precompute (``precompute_reference`` over a frozen
``SequenceLogprobModel``, batches of ``--batch`` pairs, no gradient) over ``--pairs`` chat-shaped pairs.
``groups``: one rollout's passes over ``--prompts`` prompts × ``--group`` sampled completions each (a
GRPO/RLOO group; PPO the same with its value head), ``--batch`` prompts' groups per forward: (a) the
policy's per-token log-probs and values with no gradient (π_old and V), (b) a frozen reference's per-token
log-probs, (c) the update: the policy's forward + backward on the same rows.

Lengths are chat-shaped (``vs_trl/workload.py``: log-normal prompts, median 160 tokens, and completions,
median 300, at max_length 1024), tokens random ids (speed does not depend on them). Each setting
(prefix_sharing false, then true, alternating over ``--repeats``) runs in its own fresh process, timed
after the model is loaded; tokens/s count every sequence whole (the prompt once per completion, TRL's
count), so on/off ratios compare speeds; peak RSS is the process's. Both settings' outputs are compared:
the table shows the largest difference of any log-prob (and value) between them, which must be float
rounding. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_trl.workers import _rss_hwm_mib  # noqa: E402
from vs_trl.workload import chat_lengths, prepare_model  # noqa: E402


def make_groups(n_prompts: int, group: int, max_length: int, vocab: int, seed: int
                ) -> list[tuple[list[int], list[list[int]]]]:
    """(prompt ids, completions' ids) per prompt; lengths from ``chat_lengths``, ids random."""
    rng = random.Random(seed)
    lengths = chat_lengths(n_prompts * group, max_length, max_length // 2, seed)
    out = []
    for i in range(n_prompts):
        prompt_len = lengths[i * group][0]
        prompt = [rng.randrange(4, vocab) for _ in range(prompt_len)]
        completions = [[rng.randrange(4, vocab) for _ in range(min(c, max_length - prompt_len))]
                       for _, c, _ in lengths[i * group:(i + 1) * group]]
        out.append((prompt, completions))
    return out


def _policy(model_dir: str, sharing: bool, value_head: bool = False):
    from preftune.modeling.lean_layers import make_lean
    from preftune.modeling.load import load_causal_lm
    from preftune.modeling.logprobs import SequenceLogprobModel

    lm = load_causal_lm(model_dir, "cpu")
    make_lean(lm)
    head = None
    if value_head:
        head = torch.nn.Linear(lm.config.hidden_size, 1)
        torch.nn.init.normal_(head.weight, std=0.02, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(head.bias)
    return SequenceLogprobModel(lm, padding_free=True, prefix_sharing="true" if sharing else "false",
                                value_head=head)


def worker_reference(a: argparse.Namespace, sharing: bool, out_dir: Path) -> dict:
    from preftune.data.collate import collate_preferences
    from preftune.data.tokenize import TokenizedPreference
    from preftune.modeling.reference import FrozenReference, precompute_reference

    model = _policy(a.model_dir, sharing).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    groups = make_groups(a.pairs, 2, a.max_length, model.model.config.vocab_size, a.seed)
    examples = [TokenizedPreference(tuple(p), tuple(c[0]), tuple(c[1]), f"pair {i}") for i, (p, c) in enumerate(groups)]
    reference = FrozenReference(model)

    def compute(indices: list[int]):
        batch = collate_preferences([examples[i] for i in indices], indices, pad_token_id=0)
        return [(batch.rows, reference(batch.rows))]

    start = time.perf_counter()
    table = precompute_reference(compute, len(examples), batch_size=a.batch, cache_file=None, log=lambda _: None)
    seconds = time.perf_counter() - start
    torch.save(table, out_dir / "out.pt")
    tokens = sum(2 * len(p) + len(c[0]) + len(c[1]) for p, c in groups)
    return {"phases": {"reference precompute": seconds}, "tokens": {"reference precompute": tokens}}


def worker_groups(a: argparse.Namespace, sharing: bool, out_dir: Path) -> dict:
    from preftune.data.collate import collate_rankings
    from preftune.data.tokenize import TokenizedRanking

    policy = _policy(a.model_dir, sharing, value_head=True)
    reference = _policy(a.model_dir, sharing).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    groups = make_groups(a.prompts, a.group, a.max_length, policy.model.config.vocab_size, a.seed)
    batches = []
    for i in range(0, len(groups), a.batch):
        chunk = groups[i:i + a.batch]
        examples = [TokenizedRanking(tuple(p), tuple(tuple(c) for c in cs), f"group {i + j}")
                    for j, (p, cs) in enumerate(chunk)]
        batches.append(collate_rankings(examples, list(range(len(chunk))), pad_token_id=0).rows)
    tokens = sum(len(p) * len(cs) + sum(map(len, cs)) for p, cs in groups)
    phases, outputs = {}, {}
    start = time.perf_counter()
    with torch.no_grad():
        policy.eval()
        scored = [policy(r.input_ids, r.attention_mask, r.loss_mask, per_token=True) for r in batches]
    phases["policy log-probs + values (no grad)"] = time.perf_counter() - start
    outputs["policy"] = [s.tokens for s in scored]
    outputs["values"] = [s.values for s in scored]
    start = time.perf_counter()
    with torch.no_grad():
        outputs["reference"] = [reference(r.input_ids, r.attention_mask, r.loss_mask, per_token=True).tokens
                                for r in batches]
    phases["reference log-probs (no grad)"] = time.perf_counter() - start
    policy.train()
    g = torch.Generator().manual_seed(a.seed)
    start = time.perf_counter()
    for r in batches:
        out = policy(r.input_ids, r.attention_mask, r.loss_mask, per_token=True)
        advantages = torch.randn(out.tokens.shape, generator=g)
        (-(out.tokens * advantages).sum() + out.values.square().sum()).backward()
    phases["update: policy forward + backward"] = time.perf_counter() - start
    torch.save(outputs, out_dir / "out.pt")
    return {"phases": phases, "tokens": {k: tokens for k in phases}}


def _run(a: argparse.Namespace, sharing: bool, workdir: Path, tag: str) -> dict:
    out_dir = workdir / tag
    out_dir.mkdir()
    args = [sys.executable, __file__, a.mode, "--worker", "on" if sharing else "off", "--model-dir", a.model_dir,
            "--out", str(out_dir)] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                      if k in ("pairs", "prompts", "group", "batch", "max_length", "threads", "seed")]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker ({tag}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out_dir / "result.json").read_text())
    result["out"] = str(out_dir / "out.pt")
    return result


def _max_diff(a: object, b: object) -> float:
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max(_max_diff(a[k], b[k]) for k in a)
    return max((_max_diff(x, y) for x, y in zip(a, b)), default=0.0)


def report(a: argparse.Namespace, runs: dict[bool, list[dict]]) -> str:
    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    first = runs[False][0]
    lines = [f"## prefix sharing, {a.mode}: {a.model} · max_length {a.max_length} · "
             + (f"{a.pairs} pairs, batches of {a.batch}" if a.mode == "reference"
                else f"{a.prompts} prompts × {a.group} completions, {a.batch} groups per forward")
             + f" · fp32 · {a.threads} thread(s) · median of {len(runs[False])} repeat(s), alternating fresh processes",
             "", "| pass | tokens (every sequence whole) | off: s | on: s | off: tokens/s | on: tokens/s | on / off speed |",
             "|---|---|---|---|---|---|---|"]
    for phase in first["phases"]:
        off = med([r["phases"][phase] for r in runs[False]])
        on = med([r["phases"][phase] for r in runs[True]])
        n = first["tokens"][phase]
        lines.append(f"| {phase} | {n} | {off:.2f} | {on:.2f} | {n / off:.1f} | {n / on:.1f} | {off / on:.2f}× |")
    rss_off = med([r["peak_rss_mib"] for r in runs[False]])
    rss_on = med([r["peak_rss_mib"] for r in runs[True]])
    diff = _max_diff(torch.load(runs[False][0]["out"]), torch.load(runs[True][0]["out"]))
    lines += ["", f"Peak RSS of the process: off {rss_off:.0f} MiB, on {rss_on:.0f} MiB ({rss_on / rss_off:.2f}×). "
                  f"Largest difference between the two settings' outputs: {diff:.1e}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("reference", "groups"))
    p.add_argument("--model", default="tiny", help="tiny (built here), smollm2, or a Hugging Face model folder")
    p.add_argument("--pairs", type=int, default=64, help="reference: pairs to score")
    p.add_argument("--prompts", type=int, default=8, help="groups: prompts")
    p.add_argument("--group", type=int, default=8, help="groups: completions per prompt")
    p.add_argument("--batch", type=int, default=8, help="pairs (reference) or prompts' groups (groups) per forward")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        torch.set_num_threads(a.threads)
        torch.manual_seed(a.seed)
        fn = worker_reference if a.mode == "reference" else worker_groups
        result = fn(a, a.worker == "on", a.out)
        result["peak_rss_mib"] = _rss_hwm_mib()
        (a.out / "result.json").write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="prefix-sharing-") as tmp:
        workdir = Path(tmp)
        a.model_dir = str(prepare_model(a.model, workdir, a.max_length, a.seed))
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(a.repeats):
            for sharing in (False, True):
                print(f"repeat {r + 1}/{a.repeats}: prefix sharing {'on' if sharing else 'off'} ...", file=sys.stderr)
                runs[sharing].append(_run(a, sharing, workdir, f"{'on' if sharing else 'off'}-{r}"))
        text = report(a, runs)
    print(text)
    if a.json:
        a.json.write_text(json.dumps({"settings": {k: v for k, v in vars(a).items() if k != "json" and k != "out"},
                                      "runs": {("on" if k else "off"): v for k, v in runs.items()}}, indent=2,
                                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
