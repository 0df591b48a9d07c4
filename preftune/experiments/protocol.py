"""What the experiment's parts (the method trainers, the groundwork stages, the report) use of the running
experiment, as a protocol: they depend on this, not on :class:`~preftune.experiments.sentiment.
SentimentExperiment`, which imports them (so no two modules import each other)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from preftune.experiments.config import SentimentExperimentConfig

if TYPE_CHECKING:
    from preftune.experiments.sampling import Samples


class Experiment(Protocol):
    cfg: SentimentExperimentConfig
    out: Path                            # the output folder: every stage's folder lies in it
    log: Callable[[str], object]
    device: Any                          # torch.device every stage and measurement runs on
    timings: dict[str, dict[str, Any]]   # stage → {"seconds", "skipped"} of this invocation

    @property
    def sft_dir(self) -> Path: ...

    def reward_spec(self) -> str:
        """r* as a reward spec the stages load ('module:function')."""
        ...

    def stage_config(self, cls: type, values: dict[str, Any], extra: list[str]) -> Any:
        """A stage config: the experiment's common settings, then ``values``, then the user's ``extra``."""
        ...

    def with_steps(self, stage_cfg: Any, max_steps: int, save_steps: int) -> Any: ...

    def prompts(self, split: str) -> list: ...

    def sample(self, model: Any, prompts: list, k: int, seed: int, desc: str, with_kl: bool) -> Samples: ...

    def prune(self, folder: Path) -> None: ...

    def plan(self) -> list[tuple[str, Path, Callable[[], dict]]]: ...
