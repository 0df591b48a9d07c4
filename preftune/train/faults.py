"""Deliberate faults, for the tests that prove the reliability guarantees (README, "Guarantees").

A guarantee such as "a run killed mid-save resumes from the previous checkpoint" can only be tested
by killing a real run at that exact point. ``PREFTUNE_FAULT`` names the points, comma-separated:

    kill_after_step:7      SIGKILL the process right after optimizer step 7 (before any save at 7)
    kill_in_save:4         SIGKILL while checkpoint-4 is half written
    kill_after_resume:4    SIGKILL right after a run resumed from checkpoint-4 opened its metrics log
    kill_before_final:6    SIGKILL after the last checkpoint (step 6) is saved, before final/ is written
    pause_after_step:3     after step 3, wait (up to 120 s) for a signal before the step-boundary check, so
                           a test can send SIGTERM/SIGINT at a known step
    pause_in_save:3        wait 120 s while checkpoint-3 is half written (a second signal arrives mid-save)
    nan_loss:3             make the loss of optimizer step 3 NaN (``nan_loss:3-5`` a range)
    nan_loss:3@1           ... on rank 1 only

Unset (always, outside tests) it costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "PREFTUNE_FAULT"


def _matches(point: str, step: int, rank: int) -> bool:
    spec = os.environ.get(ENV)
    if not spec:
        return False
    for item in spec.split(","):
        name, _, where = item.strip().partition(":")
        if name != point:
            continue
        steps, _, only_rank = where.partition("@")
        if only_rank and int(only_rank) != rank:
            continue
        first, _, last = steps.partition("-")
        if int(first) <= step <= int(last or first):
            return True
    return False


def kill_if(point: str, step: int, rank: int = 0) -> None:
    """SIGKILL this process at ``point`` of ``step``: no handler, no flush, no cleanup — a real crash."""
    if _matches(point, step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_if(point: str, step: int, rank: int = 0) -> float:
    """NaN at ``point`` of ``step`` (multiply a loss by it), else 1.0."""
    return float("nan") if _matches(point, step, rank) else 1.0


def pause_if(point: str, step: int, rank: int = 0, until: object = lambda: False) -> None:
    """Wait at ``point`` of ``step`` until ``until()`` is true (a signal arrived) or 120 s have passed."""
    if _matches(point, step, rank):
        deadline = time.monotonic() + 120
        while not until() and time.monotonic() < deadline:
            time.sleep(0.02)
