"""The example curves in the README: two real DPO runs on a tiny random Llama, then `preftune plot`.

    python docs/plot_example.py            # writes docs/plot_example.png (a minute or two on a CPU)

Both runs train the same in-process model (preftune.testing: byte-level BPE tokenizer, 2-layer Llama)
on the same 96 separable pairs (chosen answers use only positive words, rejected ones only negative
words; 32 held-out pairs), 24 steps of 8 pairs, lr 1e-3, β 0.1 against β 0.5. The runs go to a
temporary folder; `preftune plot` draws both on the same axes and the overview is copied here.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from pathlib import Path

from preftune.config import DPOConfig
from preftune.plot import plot_runs
from preftune.stages.dpo import run_dpo
from preftune.testing import tiny_llama, tiny_tokenizer

GOOD = ["good", "great", "excellent", "fine", "yes"]
BAD = ["bad", "awful", "poor", "terrible", "no"]


def pairs(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": f"Review number {i}:",
             "chosen": " ".join(rng.choice(GOOD) for _ in range(rng.randint(2, 6))),
             "rejected": " ".join(rng.choice(BAD) for _ in range(rng.randint(2, 6)))} for i in range(n)]


def main(out_png: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="preftune-plot-example-"))
    tokenizer = tiny_tokenizer()
    model_dir = root / "tiny-llama"
    tiny_llama(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    runs = []
    for beta in (0.1, 0.5):
        cfg = DPOConfig(model_name_or_path=str(model_dir), output_dir=str(root / f"dpo-beta{beta}"), beta=beta,
                        learning_rate=1e-3, max_steps=24, eval_steps=4, per_device_train_batch_size=8,
                        max_length=48, max_prompt_length=16, logging_steps=1, seed=0, progress_bar=False,
                        report_to="none", threads=1)
        runs.append(run_dpo(cfg, train_data=pairs(96, seed=0), eval_data=pairs(32, seed=1)).output_dir)
    written = plot_runs(runs, root / "plots")
    shutil.copyfile(root / "plots" / "overview.png", out_png)
    print(f"{len(written)} plots in {root / 'plots'}; overview copied to {out_png}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("plot_example.png"))
