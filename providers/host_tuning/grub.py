"""Editing the kernel command line in /etc/default/grub, as an administrator would. Pure.

Arguments live in GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT (the latter comes last on
the generated command line, so it wins). vela edits only the arguments it manages:
- a managed argument already present is replaced where it stands (in either variable);
- a missing one is appended to GRUB_CMDLINE_LINUX;
- everything else, and the quoting style, is left exactly as found.
Restoring the originals through the same edit therefore gives back the original file byte for
byte, as long as nobody else edited those variables in between.
"""

from __future__ import annotations

import re

from ..facts.cmdline import param_key, parse_cmdline

LINUX = "GRUB_CMDLINE_LINUX"
DEFAULT = "GRUB_CMDLINE_LINUX_DEFAULT"
VARIABLES = (LINUX, DEFAULT)
_ASSIGNMENT = re.compile(r"^(?P<name>GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(?P<value>.*)$")


class GrubDefaultsError(ValueError):
    pass


def _unquote(value: str) -> tuple[str, str]:
    value = value.strip()
    for quote in ('"', "'"):
        if len(value) >= 2 and value[0] == quote and value[-1] == quote:
            return value[1:-1], quote
    if any(char in value for char in "\"'$`\\"):
        raise GrubDefaultsError(f"cannot safely edit {value!r}: use a plain quoted string")
    return value, '"'


def variables(text: str) -> dict[str, list[str]]:
    """The tokens of each command-line variable (the last assignment wins, as in shell)."""
    found: dict[str, list[str]] = {name: [] for name in VARIABLES}
    for line in text.splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match:
            found[match["name"]] = parse_cmdline(_unquote(match["value"])[0])
    return found


def configured(text: str) -> dict[str, str]:
    """Effective configured arguments: key -> token (GRUB_CMDLINE_LINUX_DEFAULT wins)."""
    tokens: dict[str, str] = {}
    found = variables(text)
    for name in VARIABLES:
        for token in found[name]:
            tokens[param_key(token)] = token
    return tokens


def placement(text: str, wanted: dict[str, str | None]) -> dict[str, dict[str, str | None]]:
    """Where each wanted argument goes: in place in every variable that has its key, else
    appended to GRUB_CMDLINE_LINUX."""
    found = {name: {param_key(token) for token in tokens}
             for name, tokens in variables(text).items()}
    result: dict[str, dict[str, str | None]] = {name: {} for name in VARIABLES}
    for key, token in wanted.items():
        homes = [name for name in VARIABLES if key in found[name]] or [LINUX]
        for name in homes:
            result[name][key] = token
    return result


def edit(text: str, per_variable: dict[str, dict[str, str | None]]) -> str:
    """Set (token) or remove (None) managed keys, variable by variable."""
    lines = text.splitlines(keepends=True)
    seen = set()
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.match(line.strip())
        if not match or match["name"] not in per_variable:
            continue
        name = match["name"]
        seen.add(name)
        value, quote = _unquote(match["value"])
        new_value = _edit_tokens(parse_cmdline(value), per_variable[name])
        ending = "\n" if line.endswith("\n") else ""
        indent = line[:len(line) - len(line.lstrip())]
        lines[index] = f"{indent}{name}={quote}{new_value}{quote}{ending}"
    for name, wanted in per_variable.items():
        if name not in seen and any(token for token in wanted.values()):
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            tokens = " ".join(token for token in wanted.values() if token)
            lines.append(f'{name}="{tokens}"\n')
    return "".join(lines)


def _edit_tokens(tokens: list[str], wanted: dict[str, str | None]) -> str:
    result: list[str] = []
    placed = set()
    for token in tokens:
        key = param_key(token)
        if key not in wanted:
            result.append(token)
        elif key not in placed and wanted[key] is not None:
            result.append(wanted[key])
            placed.add(key)
        # else: removed, or a duplicate of a key already placed
    result += [token for key, token in wanted.items() if token and key not in placed]
    return " ".join(result)


def grubby_arguments(current: str, wanted: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(--args, --remove-args) for grubby, from the default entry's current arguments."""
    present = {param_key(token): token for token in parse_cmdline(current)}
    add = [token for key, token in wanted.items() if token and present.get(key) != token]
    remove = [present[key] for key, token in wanted.items() if token is None and key in present]
    return add, remove
