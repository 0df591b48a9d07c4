"""The Hugging Face Hub, used the way every Hugging Face tool uses it.

A name that is not a local file or folder but has the form of a Hub id (``org/name``) is fetched
with ``huggingface_hub``: downloaded into the standard cache (``$HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``) when the Hub can be reached, read from that cache when it cannot or
when ``HF_HUB_OFFLINE=1`` is set. What could not be found is explained in one message: whether the
cache was looked in (and where), and why nothing could be downloaded.
"""

from __future__ import annotations

from pathlib import Path

from preftune.errors import ConfigError

__all__ = ["describe_failure", "download_snapshot", "hub_cache_dir", "is_hub_id", "offline"]


def is_hub_id(name: str) -> bool:
    """True when ``name`` has the form of a Hub repository id (``name`` or ``org/name``) and is no path."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/"):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (at call time, so a test may switch it)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def download_snapshot(repo_id: str, *, repo_type: str = "model", revision: str | None = None,
                      allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None,
                      what: str = "model") -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision``: downloaded, or from the cache offline.

    ``huggingface_hub.snapshot_download`` decides: online it resolves the revision, downloads the
    files that match the patterns and records the revision in the cache's ``refs/``; offline (or
    when the Hub cannot be reached) it returns the cached snapshot of that revision. Every failure
    becomes a ConfigError from :func:`describe_failure`.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                   allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many unrelated types; each is explained
        raise ConfigError(describe_failure(what, repo_id, revision, e, repo_type=repo_type)) from None
    return Path(folder)


def describe_failure(what: str, repo_id: str, revision: str | None, error: BaseException, *,
                     repo_type: str = "model") -> str:
    """One message for a Hub id that could not be resolved: the cache looked in, and why no download."""
    from huggingface_hub.errors import (
        GatedRepoError,
        IncompleteSnapshotError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    prefix = "datasets" if repo_type == "dataset" else f"{repo_type}s"
    cache = hub_cache_dir() / f"{prefix}--{repo_id.replace('/', '--')}"
    head = f"{what} {repo_id!r}: not a local {'file or folder' if what == 'dataset' else 'folder'}"
    url = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    if isinstance(error, IncompleteSnapshotError):
        return (f"{head}, and its cached snapshot for revision {rev!r} is incomplete ({error}); "
                "run once with network access to complete it")
    if isinstance(error, GatedRepoError):
        return (f"{head}, and {url} is gated: accept its terms on that page, then log in "
                "(`hf auth login` or HF_TOKEN) and run again")
    if isinstance(error, RepositoryNotFoundError):
        return (f"{head}, and the Hub has no {what} {repo_id!r} (or it is private: log in with "
                "`hf auth login` or set HF_TOKEN). Check the name; for a local folder give its path")
    if isinstance(error, RevisionNotFoundError):
        return f"{head}, and the Hub has no revision {rev!r} of {repo_id!r}; check the revision key"
    looked = (f"looked in the Hugging Face cache at {cache} for revision {rev!r}: "
              + ("not there" if not cache.exists() else "no complete snapshot of that revision"))
    cause = error.__cause__ or error.__context__
    if offline() or isinstance(error, OfflineModeIsEnabled) or isinstance(cause, OfflineModeIsEnabled):
        why = ("nothing was downloaded because HF_HUB_OFFLINE=1 is set; unset it on a machine with network "
               "access to download it once, or pass a local path")
    else:
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(error).__name__}: {error}"
        why = f"it could not be downloaded ({reason.splitlines()[0][:300]}); check the network or pass a local path"
    return f"{head}; {looked}; {why}"

