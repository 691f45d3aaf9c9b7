"""Reading what `mlxconfig|mstconfig -d DEV -y set NAME=VALUE...` prints, so the tests can hold
the stand-in's answers to the recorded real ones. The product does not parse it: it trusts the
tool's exit status and reads the result back with a query."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SetResult:
    applied: bool
    reboot_needed: bool
    errors: list[str]


def parse_set(text: str) -> SetResult:
    """The tool prints "-E- ..." lines for errors, "Applying... Done!" when it wrote, and asks
    to "reboot machine to load new configurations" (recorded outputs in tests/data/recorded/
    mlxconfig_set)."""
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith("-E-")]
    applied = "Applying... Done!" in text
    reboot = "reboot machine to load new configurations" in text.lower() or \
        "reboot" in text.lower() and applied
    return SetResult(applied=applied and not errors, reboot_needed=reboot, errors=errors)
