"""preftune vs TRL's DPOTrainer: same model, pairs, batch, β, lr, optimizer and precision, one invocation.

    pip install -e .[bench]        # adds trl, pinned (its DPOTrainer is what we compare against)
    python benchmarks/dpo_vs_trl.py --model tiny --steps 5 --repeats 1
    python benchmarks/dpo_vs_trl.py --model smollm2 --max-length 512 --batch 4 --steps 10 --repeats 2 \\
        --threads 2 [--bf16] [--device cpu|cuda] [--json out.json]
    python benchmarks/dpo_vs_trl.py --model smollm2 --workload chat --max-length 1024 --max-prompt-length 512 \\
        --batch 4 --steps 10 --repeats 2 --frameworks trl preftune preftune-unshared

1. Equivalence check (in this process, before any timing; ``--check-only`` stops after it, ``--skip-check``
   skips it): both frameworks turn the same strings into the same token ids and the same first batch, and
   compute the same loss and gradients on it (``vs_trl/check.py`` says how close is close enough). Otherwise
   the comparison is void: the script says why and exits 1.
2. Timing: each arm trains in its own fresh subprocess, alternating (TRL, preftune, preftune without prefix
   sharing, TRL, ...) over ``--repeats`` rounds, so peak memory is per arm and none inherits another's
   allocator state (``vs_trl/workers.py``).
3. Report (``vs_trl/report.py``): tokens/s (TRL's token count, the same for every arm), wall time split into
   reference precompute / first step / later steps, peak RSS (CUDA: max_memory_allocated), FLOP utilisation
   against ``matmul_peak.py`` (``vs_trl/flops.py``), and the loss curves side by side. Medians over repeats.

Workloads (``--workload``, ``vs_trl/workload.py``): ``synthetic`` pairs of uniform-ish lengths, or ``chat``:
prompt and completion lengths drawn like UltraFeedback's (log-normal, prompt median 160 and σ 0.9,
completions median 300 and σ 0.6 at max_length 1024), where prompts are a large share of every sequence
and prefix sharing has the most to save. Random words in both, sized so that nothing is truncated.

Same settings on both sides: the model folder (tiny: a random Llama + byte-level BPE built in-process;
smollm2: the converted SmolLM2-135M-Instruct; or any model folder), the data ORDER, batch size and
accumulation, β, lr (constant, no warm-up), AdamW (torch, non-fused), max_grad_norm, precision, gradient
checkpointing (off unless ``--gradient-checkpointing``: TRL's own default is on), threads, plain text (no chat
template), no dropout. Not the same, by design: the reference log-probs (``--reference``). By default each
framework uses its own default: TRL runs the reference model on every step, preftune precomputes them in one
pass before training. ``--reference live`` / ``precompute`` makes both do the same.

Model loading, tokenization and preftune's final save are outside the timed phase on both sides. Run it on a
quiet machine: other load distorts the timings (not the memory).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_trl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__doc__))
