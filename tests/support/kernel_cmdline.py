"""Reading one value off a kernel command line, as the fake kernel and the lab tests need it
(the product compares whole parameters: `providers.facts.cmdline`)."""

from __future__ import annotations

from providers.facts.cmdline import cmdline_params


def cmdline_value(text: str, key: str) -> str | None:
    """The effective (last) value of `key`, None if absent or a bare flag."""
    wanted = key.replace("-", "_")
    values = [value for name, value in cmdline_params(text) if name == wanted]
    return values[-1] if values else None
