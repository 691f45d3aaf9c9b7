"""Reading the tagged records that gather.sh and the observation sections print."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator


def records(text: str) -> Iterator[tuple[str, str, str, str]]:
    """(kind, subject, field, value) for every well-formed line."""
    for line in text.splitlines():
        parts = line.split("\t", 3)
        if len(parts) == 4:
            yield parts[0], parts[1], parts[2], parts[3]


def decoded(value: str) -> str:
    """A base64 value as text ("" when it is not base64)."""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""
