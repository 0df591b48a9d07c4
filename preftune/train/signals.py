"""SIGTERM and SIGINT (Ctrl-C) stop a run cleanly at the next step boundary.

Schedulers and ``kill`` send SIGTERM; a terminal sends SIGINT. The first one only sets a flag and
says so; the training loop checks it after each optimizer step (every rank votes in a reduction it
makes anyway, so all ranks stop after the same step), saves a checkpoint unless one was just saved,
and raises :class:`RunInterrupted`, which the CLI turns into one line on how to continue and exit
code 128 + the signal (143 for SIGTERM, 130 for SIGINT). A second signal stops at once, without
saving: the last complete checkpoint stays usable, since saves are atomic.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from preftune.errors import PreftuneError

HANDLED = (signal.SIGTERM, signal.SIGINT)
_requested: int | None = None


class RunInterrupted(PreftuneError):
    """The run stopped because of a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _write(text: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside a print to the same stream
    os.write(2, f"[preftune] {text}\n".encode())


def _handler(signum: int, frame: Any) -> None:
    global _requested
    if _requested is None:
        _requested = signum
        _write(f"{name(signum)} received: stopping after the current step and saving a checkpoint "
               "(send it again to stop at once, without saving)")
        return
    _write(f"second signal ({name(signum)}): stopping now without saving; resume=latest continues from the "
           "last complete checkpoint")
    os._exit(128 + signum)


def install() -> Callable[[], None]:
    """Handle SIGTERM and SIGINT until the returned function is called (it restores the previous
    handlers). Off the main thread, where Python cannot install handlers, it does nothing."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _requested = None
    previous = {s: signal.signal(s, _handler) for s in HANDLED}

    def uninstall() -> None:
        global _requested
        for s, h in previous.items():
            signal.signal(s, h)
        _requested = None
    return uninstall


def requested() -> int | None:
    """The signal that asked this process to stop, if any."""
    return _requested
