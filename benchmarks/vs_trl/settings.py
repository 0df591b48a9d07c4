"""The settings every worker agrees on, and the arms that are timed."""

from __future__ import annotations

import dataclasses
from typing import Any

# Arms of the comparison: TRL, and preftune with extra settings over its defaults.
ARMS: dict[str, dict[str, Any] | None] = {
    "trl": None,
    "preftune": {},
    "preftune-unshared": {"prefix_sharing": False},
    "preftune-release": {"release_host_memory": True},
}
ARM_TITLES = {"trl": "TRL", "preftune": "preftune", "preftune-unshared": "preftune, no prefix sharing",
              "preftune-release": "preftune, release_host_memory"}


@dataclasses.dataclass
class Settings:
    """Everything both workers must agree on (JSON round-trips to the subprocesses)."""

    model: str                  # tiny | smollm2 | a folder (e.g. built by workload.model_from_config)
    model_dir: str
    max_length: int
    max_prompt_length: int
    batch: int
    grad_accum: int
    steps: int
    beta: float
    lr: float
    max_grad_norm: float
    bf16: bool
    device: str
    threads: int
    seed: int
    gradient_checkpointing: bool
    reference: str              # default | live | precompute
    preftune_settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # --preftune key=value
    workload: str = "synthetic"  # synthetic | chat

    @property
    def num_pairs(self) -> int:
        return self.batch * self.grad_accum * self.steps

    def precompute(self, framework: str) -> bool:
        if self.reference == "default":
            return framework != "trl"  # TRL's default: live reference; preftune's: precomputed
        return self.reference == "precompute"
