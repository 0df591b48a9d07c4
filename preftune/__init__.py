"""preftune: preference alignment for language models (DPO and its family, SFT → reward model → RL).

The Python API a TRL user expects::

    from preftune import DPOConfig, run_dpo

    cfg = DPOConfig(model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", loss_type="ipo", beta=0.1)
    result = run_dpo(cfg, train_data=my_dataset)

Configs take TRL's key names and read values as the command line does (``learning_rate="5e-7"``,
``loss_type="ipo"``); every problem is reported at once. The ``run_*`` functions load the stages (and
torch) on first use, so ``import preftune`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from preftune.config import DPOConfig, EvalConfig, RLConfig, RMConfig, SFTConfig, load_config

_RUNNERS = {"run_sft": "preftune.stages.sft", "run_dpo": "preftune.stages.dpo", "run_rm": "preftune.stages.reward_model",
            "run_rl": "preftune.stages.rl", "run_eval": "preftune.stages.evaluate"}

__all__ = ["DPOConfig", "EvalConfig", "RLConfig", "RMConfig", "SFTConfig", "load_config", *_RUNNERS]


def __getattr__(name: str) -> Any:
    if name in _RUNNERS:
        return getattr(import_module(_RUNNERS[name]), name)
    raise AttributeError(f"module 'preftune' has no attribute {name!r}")
