"""What a key a stage does not take means, and what to write instead.

Consulted only for keys a stage does not have: a key a stage leaves out on purpose carries its reason.
"""

from __future__ import annotations


def hint_for(cls: type, key: str) -> str | None:
    reason = getattr(cls, "left_out", {}).get(key)
    if reason:
        return reason
    return None
