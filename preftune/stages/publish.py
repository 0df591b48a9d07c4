"""``push_to_hub``: upload the trained model to the Hugging Face Hub, as transformers' Trainer does.

Everything that can fail is tried when the run starts, before any model loads: the network, the token
(``hub_token``, ``HF_TOKEN`` or the one ``hf auth login`` stored) and the repository (created if
missing). A run that cannot publish stops there, not after hours of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.errors import ConfigError


@dataclass
class Publisher:
    repo_id: str
    token: str | None
    revision: str | None
    every_save: bool

    def push(self, folder: Path, message: str) -> str:
        from huggingface_hub import HfApi

        api = HfApi(token=self.token)
        if self.revision:
            api.create_branch(self.repo_id, branch=self.revision, exist_ok=True)
        info = api.upload_folder(repo_id=self.repo_id, folder_path=str(folder), commit_message=message,
                                 revision=self.revision)
        return str(getattr(info, "commit_url", info))


def prepare_push(cfg: Any) -> Publisher | None:
    """None without push_to_hub; else a Publisher whose repository exists and accepts this token."""
    if not getattr(cfg, "push_to_hub", False):
        return None
    import os

    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError("push_to_hub needs the network but HF_HUB_OFFLINE is set: unset it, or set "
                          "push_to_hub=false and upload final/ later (hf upload <repo> <output_dir>/final)")
    token = cfg.hub_token or get_token()
    if not token:
        raise ConfigError("push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN, or give "
                          "hub_token")
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
        name = cfg.hub_model_id or Path(cfg.output_dir).resolve().name
        repo_id = name if "/" in name else f"{user}/{name}"
        api.create_repo(repo_id, private=cfg.hub_private_repo, exist_ok=True)
    except Exception as e:  # network down, token refused, no permission: all stop the run here
        raise ConfigError(f"push_to_hub: the Hub cannot be reached or refused the token ({type(e).__name__}: "
                          f"{e}); fix it or set push_to_hub=false") from None
    return Publisher(repo_id=repo_id, token=token, revision=cfg.hub_revision,
                     every_save=cfg.hub_strategy == "every_save")
