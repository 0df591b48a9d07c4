"""Text that is not valid Unicode: bytes that are not UTF-8, and lone surrogates.

Files are decoded with ``errors="surrogateescape"``, which maps each byte that is not valid UTF-8
to one code point in U+DC80..U+DCFF instead of raising a bare UnicodeDecodeError that names no
line. The loaders then look for those code points and report file, line or row, and field; a
file is never read with bytes silently replaced.

A lone surrogate can also arrive without any bad byte: a JSON escape such as ``"\\ud800"`` without
its pair, or an in-memory string. No tokenizer can encode one (the fast tokenizers fail with an
unrelated TypeError), so render checks every text field for them too.
"""

from __future__ import annotations

import re
from typing import Any

from preftune.errors import DataError

__all__ = ["check_text", "first_undecoded", "printable", "undecoded_error", "undecoded_field"]

_UNDECODED = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def first_undecoded(text: str) -> tuple[int, int] | None:
    """``(index, byte)`` of the first byte that was not valid UTF-8 in ``text`` (read with surrogateescape)."""
    found = _UNDECODED.search(text)
    if found is None:
        return None
    return found.start(), ord(found.group()) - 0xDC00


def undecoded_field(value: Any, path: str = "") -> str | None:
    """Path (``chosen``, ``chosen[1].content``) of the first key or string in ``value`` holding a bad byte."""
    if isinstance(value, str):
        return path if _UNDECODED.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _UNDECODED.search(key):
                return printable(name)
            found = undecoded_field(item, name)
            if found is not None:
                return printable(found)
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = undecoded_field(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def undecoded_error(origin: str, byte: int, where: str, field: str | None, subject: str = "the text") -> DataError:
    """The one message for a file that is not UTF-8: origin, field when known, the byte and its place."""
    if field:
        subject = f"field '{field}'"
    return DataError(
        f"{origin}: {subject} is not valid UTF-8 (byte 0x{byte:02x} {where}); preftune reads text files as "
        "UTF-8, so re-encode the file (e.g. `iconv -f latin1 -t utf-8`)"
    )


def check_text(text: str, where: str, origin: str) -> None:
    """Raise DataError if ``text`` holds a surrogate, which no tokenizer can encode; ``where`` names the field."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise DataError(
            f"{origin}: {where} is not valid Unicode text: a lone surrogate U+{ord(found.group()):04X} "
            f"at character {found.start()} (e.g. a JSON escape '\\u{ord(found.group()):04x}' without its pair)"
        )


def printable(text: str) -> str:
    """``text`` with surrogates written as escapes (a bad byte as ``\\xe9``), so a message can always be printed."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # bad bytes back to themselves
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
