"""Exceptions with messages a user can act on: every one names where the problem is."""


class PreftuneError(Exception):
    """Base class for errors preftune raises on purpose (bad input, bad config, bad state)."""


class DataError(PreftuneError, ValueError):
    """Malformed input data. The message starts with the origin: ``file:line`` (or row) and field."""


class ConfigError(PreftuneError, ValueError):
    """An invalid configuration: unknown key, wrong type or out-of-range value; names the key."""


class SkipExample(PreftuneError):
    """Raised by a data step for an example that is valid but unusable (e.g. fully truncated).

    The dataset builder catches it, drops the example and counts ``reason`` so the run can report
    exactly what was dropped and why; nothing is dropped silently.
    """

    def __init__(self, reason: str, origin: str = "") -> None:
        super().__init__(f"{origin}: {reason}" if origin else reason)
        self.reason = reason
        self.origin = origin
