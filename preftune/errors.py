"""Exceptions with messages a user can act on: every one names where the problem is."""


class PreftuneError(Exception):
    """Base class for errors preftune raises on purpose (bad input, bad config, bad state)."""


class DataError(PreftuneError, ValueError):
    """Malformed input data. The message starts with the origin: ``file:line`` (or row) and field."""


class ConfigError(PreftuneError, ValueError):
    """An invalid configuration: unknown key, wrong type or out-of-range value; names the key.

    A config with several problems raises one ConfigError listing all of them (``problems``), so a
    recipe is fixed in one edit, not one rerun per key.
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems in the config:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class SkipExample(PreftuneError):
    """Raised by a data step for an example that is valid but unusable (e.g. fully truncated).

    The dataset builder catches it, drops the example and counts ``reason`` so the run can report
    exactly what was dropped and why; nothing is dropped silently.
    """

    def __init__(self, reason: str, origin: str = "") -> None:
        super().__init__(f"{origin}: {reason}" if origin else reason)
        self.reason = reason
        self.origin = origin
