"""Peak memory and time of the log-prob + DPO-loss path alone: full logits vs preftune's chunks.

    python benchmarks/logprob_memory.py [--vocab 49152] [--hidden 576] [--seq 1024] [--pairs 1]
        [--chunks 128 512 1024 2048] [--completion-frac 1.0] [--repeats 2] [--threads 2] [--device cpu|cuda]

The input is what a decoder hands the output layer: hidden states [2·pairs, seq, hidden] (rows: chosen
then rejected; requires grad) and an untied output layer [vocab, hidden] (requires grad), fp32. Defaults
are SmolLM2-135M's (hidden 576, vocab 49,152) at 1,024 tokens. Each pass computes the per-sequence
completion log-probs, the sigmoid DPO loss against fixed reference log-probs, and the backward pass.

Variants:

* ``naive``: full logits [rows, seq, vocab] → float → log_softmax → gather → masked sum per sequence
  (``model(...).logits`` and the usual gather; what ``preftune.modeling.logprobs.full_logits_logps`` does).
* ``chunked-N``: preftune's own ``SequenceLogprobModel`` after the decoder (a stand-in LM returns the given
  hidden states): the completion positions are gathered and run through the output layer N tokens at a
  time by its custom autograd function (``preftune/modeling/output_layer.py``; ``logprob_chunk_size``).
* ``checkpointed-N``: the same chunks, but through plain autograd with each chunk under activation
  checkpointing (``torch.utils.checkpoint``; preftune's implementation before the custom autograd
  function): backward holds a chunk's logits, log-softmax and their gradient, and a fresh [V, H]
  weight gradient per chunk.
* ``trl``: TRL's fused LM head (``ChunkedLogProbFunction`` with the outputs DPOTrainer asks for), as
  DPOTrainer calls it on this device; only if trl is installed (``pip install -e .[bench]``).

Each variant runs in a fresh subprocess: allocate the inputs, one warm-up pass, drop the gradients, read
the RSS (the baseline), reset the peak (/proc/self/clear_refs), run ``--repeats`` timed passes. Reported:
peak RSS minus the baseline on CPU (``torch.cuda.max_memory_allocated`` minus the allocated baseline on
GPU), which includes the gradients themselves (the output layer's: vocab × hidden × 4 bytes), and the
median seconds per pass.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Inputs:
    hidden: Tensor      # [R, T, H], requires grad
    weight: Tensor      # [V, H], requires grad
    input_ids: Tensor   # [R, T]
    attention_mask: Tensor
    loss_mask: Tensor   # [R, T] bool: completion tokens
    ref_logps: Tensor   # [R]
    beta: float = 0.1


def _default_chunk() -> int:
    from preftune.config import DPOConfig

    return DPOConfig.__dataclass_fields__["logprob_chunk_size"].default


DEFAULT_CHUNK = _default_chunk()


def make_inputs(pairs: int, seq: int, hidden: int, vocab: int, completion_frac: float = 1.0,
                device: str = "cpu", seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    rows = 2 * pairs
    h = torch.randn(rows, seq, hidden, generator=g).to(device).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) / math.sqrt(hidden)).to(device).requires_grad_()
    ids = torch.randint(0, vocab, (rows, seq), generator=g).to(device)
    loss_mask = torch.zeros(rows, seq, dtype=torch.bool, device=device)
    loss_mask[:, max(1, int(round(seq * (1 - completion_frac)))):] = True  # position 0 is always prompt
    ref = (-math.log(vocab) * loss_mask.sum(1).float() + torch.randn(rows, generator=g).to(device)).detach()
    return Inputs(h, w, ids, torch.ones_like(ids), loss_mask, ref)


def dpo_loss(logps: Tensor, x: Inputs) -> Tensor:
    pc, pr = logps.chunk(2)
    rc, rr = x.ref_logps.chunk(2)
    return -F.logsigmoid(x.beta * ((pc - rc) - (pr - rr))).mean()


def logps_naive(x: Inputs) -> Tensor:
    logits = F.linear(x.hidden, x.weight).float()                                    # [R, T, V]
    token = logits[:, :-1].log_softmax(-1).gather(2, x.input_ids[:, 1:, None]).squeeze(2)
    return (token * x.loss_mask[:, 1:]).sum(1)


class _GivenHiddenLM(nn.Module):
    """A causal LM whose decoder output is given: everything after the decoder is preftune's own code."""

    def __init__(self, x: Inputs) -> None:
        super().__init__()
        self._x = x
        self.config = types.SimpleNamespace()
        # A real linear layer whose weight is the given tensor itself (gradients land on x.weight).
        self._head = nn.Linear(x.weight.shape[1], x.weight.shape[0], bias=False, device="meta")
        del self._head.weight
        self._head.weight = x.weight

    def get_decoder(self):
        return lambda **_: types.SimpleNamespace(last_hidden_state=self._x.hidden)

    def get_output_embeddings(self):
        return self._head


def logps_chunked(x: Inputs, chunk: int) -> Tensor:
    from preftune.modeling.logprobs import SequenceLogprobModel
    from preftune.modeling.output_transform import OutputTransform

    # No forward to probe: the transform is the identity by construction.
    wrapped = SequenceLogprobModel(_GivenHiddenLM(x), chunk, output_transform=OutputTransform())
    return wrapped(x.input_ids, x.attention_mask, x.loss_mask).logps


def logps_checkpointed(x: Inputs, chunk: int) -> Tensor:
    from torch.utils.checkpoint import checkpoint

    def token_logps(h: Tensor, w: Tensor, t: Tensor) -> Tensor:
        return F.linear(h, w).float().log_softmax(-1).gather(1, t[:, None]).squeeze(1)

    predict = x.loss_mask[:, 1:]
    hidden, targets = x.hidden[:, :-1][predict], x.input_ids[:, 1:][predict]
    token = torch.cat([checkpoint(token_logps, hidden[i:i + chunk], x.weight, targets[i:i + chunk], use_reentrant=False)
                       for i in range(0, hidden.shape[0], chunk)])
    rows = torch.arange(predict.shape[0]).unsqueeze(1).expand_as(predict)[predict]
    return torch.zeros(predict.shape[0], dtype=token.dtype).index_add(0, rows.to(token.device), token)


def logps_trl(x: Inputs) -> Tensor:
    """TRL 1.16 DPOTrainer's fused LM head as ``add_fused_lm_head`` calls it (trl/trainer/utils.py)."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction, _use_triton
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    hidden = x.hidden[:, :-1]
    labels = x.input_ids[:, 1:].masked_fill(~x.loss_mask[:, 1:], -100)
    mask = labels != -100
    compact = _use_triton(hidden.device)  # CPU: every position is scored, then masked
    per_token = ChunkedLogProbFunction.apply(
        hidden[mask] if compact else hidden.reshape(-1, hidden.size(-1)), x.weight, None,
        labels[mask] if compact else labels.clamp(min=0).reshape(-1), 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
        ("log_probs", "entropy", "mean_logits", "is_top1"))[0]
    if compact:
        per_token = per_token.new_zeros(mask.shape).masked_scatter(mask, per_token)
    else:
        per_token = per_token.view(mask.shape).masked_fill(~mask, 0)
    return per_token.sum(1)


def variant_fn(name: str):
    if name == "naive":
        return logps_naive
    if name.startswith("chunked-"):
        chunk = int(name.split("-", 1)[1])
        return lambda x: logps_chunked(x, chunk)
    if name.startswith("checkpointed-"):
        chunk = int(name.split("-", 1)[1])
        return lambda x: logps_checkpointed(x, chunk)
    if name == "trl":
        return logps_trl
    raise ValueError(f"unknown variant {name!r}")


def one_pass(fn, x: Inputs) -> tuple[Tensor, Tensor]:
    """Forward + backward; returns (loss, logps), gradients left in x.hidden.grad / x.weight.grad."""
    x.hidden.grad = None
    x.weight.grad = None
    logps = fn(x)
    loss = dpo_loss(logps, x)
    loss.backward()
    return loss.detach(), logps.detach()


def _rss_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(name: str, a: argparse.Namespace) -> dict:
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    x = make_inputs(a.pairs, a.seq, a.hidden, a.vocab, a.completion_frac, a.device)
    fn = variant_fn(name)
    one_pass(fn, x)  # warm-up: kernels, thread pools
    x.hidden.grad = x.weight.grad = None
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        one_pass(fn, x)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        x.hidden.grad = x.weight.grad = None
    peak = (torch.cuda.max_memory_allocated() / 2**20) if cuda else _rss_mib("VmHWM")
    return {"variant": name, "peak_mib": peak - base, "baseline_mib": base, "seconds": statistics.median(times),
            "completion_tokens": int(x.loss_mask[:, 1:].sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=49_152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--pairs", type=int, default=1, help="pairs: 2 × pairs sequences (chosen | rejected)")
    p.add_argument("--chunks", type=int, nargs="+", default=[128, 512, 1024, 2048])
    p.add_argument("--checkpointed", type=int, nargs="*", default=[512, 1024],
                   help="chunk sizes for the activation-checkpointing variant (the earlier implementation)")
    p.add_argument("--completion-frac", type=float, default=1.0,
                   help="fraction of each sequence that is completion (1.0: all but the first token)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-trl", action="store_true", help="leave out TRL's fused head")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.worker:
        print(json.dumps(measure(a.worker, a)))
        return

    names = (["naive"] + [f"chunked-{c}" for c in a.chunks] + [f"checkpointed-{c}" for c in a.checkpointed])
    if not a.no_trl:
        try:
            import trl  # noqa: F401

            names.append("trl")
        except ImportError:
            print("trl not installed: no TRL row (pip install -e .[bench])", file=sys.stderr)
    passthrough = sys.argv[1:]
    results = []
    for name in names:
        print(f"{name} ...", file=sys.stderr)
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *passthrough, "--worker", name],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = 2 * a.pairs
    logits_mib = rows * a.seq * a.vocab * 4 / 2**20
    grad_mib = a.vocab * a.hidden * 4 / 2**20
    naive = results[0]
    what = "CUDA max_memory_allocated" if a.device == "cuda" else "peak RSS"
    print(f"## Log-prob + DPO loss, forward + backward: vocab {a.vocab:,}, hidden {a.hidden}, {rows} × {a.seq} tokens "
          f"({results[0]['completion_tokens']} completion tokens), fp32, {a.device}, {a.threads} thread(s), "
          f"torch {torch.__version__}")
    print()
    print(f"Full logits: {logits_mib:.0f} MiB per copy; the output layer's gradient alone: {grad_mib:.0f} MiB "
          f"(in every row). Memory: {what} over the baseline; time: median of {a.repeats}.")
    print()
    print(f"| variant | {what} over baseline, MiB | ÷ naive | s per pass | ÷ naive |")
    print("|---|---|---|---|---|")
    labels = {"naive": "naive (full logits)", "trl": "TRL 1.16 fused head (DPOTrainer's path here)"}
    for r in results:
        v = r["variant"]
        if v in labels:
            label = labels[v]
        elif v.startswith("checkpointed-"):
            label = f"checkpointed chunks of {v.split('-', 1)[1]} (earlier preftune)"
        else:
            size = int(v.split("-", 1)[1])
            label = f"preftune, chunk {size}" + (" (default)" if size == DEFAULT_CHUNK else "")
        print(f"| {label} | {r['peak_mib']:.0f} | {r['peak_mib'] / naive['peak_mib']:.2f} | {r['seconds']:.2f} | "
              f"{r['seconds'] / naive['seconds']:.2f} |")
    if a.json:
        a.json.write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k not in ("json", "worker")},
                                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
