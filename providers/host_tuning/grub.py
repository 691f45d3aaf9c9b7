"""Editing the kernel command line in /etc/default/grub, as an administrator would. Pure.

Arguments live in GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT (the latter comes last on
the generated command line, so it wins). vela edits only the arguments it manages:
- a managed argument already present is replaced where it stands (in either variable);
- a missing one is appended to GRUB_CMDLINE_LINUX;
- everything else, and the quoting style, is left exactly as found.
Restoring the originals through the same edit therefore gives back the original file byte for
byte, as long as nobody else edited those variables in between.

Huge page arguments are keyed by pool (`providers.facts.cmdline.param_keys`): vela owns
`default_hugepagesz` and its own pool's `hugepagesz=<size>` and `hugepages=`, and never another
pool's pair. A missing `hugepages=` goes right after its `hugepagesz=` (a missing `hugepagesz=`
right before its `hugepages=`); a pool missing whole goes at the end of the variable holding the
line's last huge page argument, where nothing after it can take it for its size. An edit that
would still make another pool's `hugepages=` count pages of another size is refused
(`GrubDefaultsError`) instead of written.
"""

from __future__ import annotations

import re

from ..errors import VelaError
from ..facts.cmdline import is_hugetlb, param_key, param_keys, parse_cmdline

LINUX = "GRUB_CMDLINE_LINUX"
DEFAULT = "GRUB_CMDLINE_LINUX_DEFAULT"
VARIABLES = (LINUX, DEFAULT)
_ASSIGNMENT = re.compile(r"^(?P<name>GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(?P<value>.*)$")
# Keys of huge page arguments in originals saved before pools were told apart: one per name.
LEGACY = frozenset({"hugepagesz", "hugepages"})


class GrubDefaultsError(VelaError, ValueError):
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


def _line_keys(found: dict[str, list[str]], legacy: bool = False) -> dict[str, list[str]]:
    """The key of every token of each variable, read on the whole generated line
    (GRUB_CMDLINE_LINUX, then GRUB_CMDLINE_LINUX_DEFAULT)."""
    linux, default = found[LINUX], found[DEFAULT]
    if legacy:
        return {name: [param_key(token) for token in found[name]] for name in VARIABLES}
    return {LINUX: param_keys(linux, after=default), DEFAULT: param_keys(default, before=linux)}


def keyed(text: str) -> dict[str, dict[str, str]]:
    """Each variable's arguments: key -> token (the last of a key given twice)."""
    found = variables(text)
    keys = _line_keys(found)
    return {name: dict(zip(keys[name], found[name], strict=True)) for name in VARIABLES}


def configured(text: str) -> dict[str, str]:
    """Effective configured arguments: key -> token (GRUB_CMDLINE_LINUX_DEFAULT wins)."""
    tokens: dict[str, str] = {}
    for arguments in keyed(text).values():
        tokens.update(arguments)
    return tokens


def configured_line(line: str) -> dict[str, str]:
    """The same for one command line (grubby's arguments, /proc/cmdline)."""
    tokens = parse_cmdline(line)
    return dict(zip(param_keys(tokens), tokens, strict=True))


def arg_keys(tokens: list[str], wanted: dict[str, str | None]) -> list[str]:
    """The keys of a line's tokens as `wanted` names them (by name alone for a record saved
    before pools were told apart)."""
    if _legacy(wanted):
        return [param_key(token) for token in tokens]
    return param_keys(tokens)


def placement(text: str, wanted: dict[str, str | None]) -> dict[str, dict[str, str | None]]:
    """Where each wanted argument goes: in place in every variable that has its key, else
    appended to GRUB_CMDLINE_LINUX (huge page arguments: next to their pool's other half, else
    in the variable holding the line's last huge page argument)."""
    keys = _line_keys(variables(text))
    found = {name: set(keys[name]) for name in VARIABLES}
    last_pool = next((name for name in reversed(VARIABLES)
                      if any(is_hugetlb(key) for key in keys[name])), LINUX)
    result: dict[str, dict[str, str | None]] = {name: {} for name in VARIABLES}
    for key, token in wanted.items():
        homes = [name for name in VARIABLES if key in found[name]]
        if not homes and is_hugetlb(key):
            partner = _partner(key)
            homes = [name for name in VARIABLES if partner in found[name]][-1:] or [last_pool]
        for name in homes or [LINUX]:
            result[name][key] = token
    return result


def edit(text: str, per_variable: dict[str, dict[str, str | None]]) -> str:
    """Set (token) or remove (None) managed keys, variable by variable."""
    found = variables(text)
    legacy = any(_legacy(wanted) for wanted in per_variable.values())
    lines = text.splitlines(keepends=True)
    seen = set()
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.match(line.strip())
        if not match or match["name"] not in per_variable:
            continue
        name = match["name"]
        seen.add(name)
        value, quote = _unquote(match["value"])
        tokens = parse_cmdline(value)
        around = {**found, name: tokens}
        keys = _line_keys(around, legacy)[name]
        new_value = " ".join(_edit_tokens(tokens, keys, per_variable[name], legacy))
        ending = "\n" if line.endswith("\n") else ""
        indent = line[:len(line) - len(line.lstrip())]
        lines[index] = f"{indent}{name}={quote}{new_value}{quote}{ending}"
    for name, wanted in per_variable.items():
        if name not in seen and any(token for token in wanted.values()):
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            tokens = " ".join(token for token in wanted.values() if token)
            lines.append(f'{name}="{tokens}"\n')
    edited = "".join(lines)
    if not legacy:
        after = variables(edited)
        _check_pools(found[LINUX] + found[DEFAULT], after[LINUX] + after[DEFAULT],
                     {key: token for wanted in per_variable.values()
                      for key, token in wanted.items()})
    return edited


def edit_line(line: str, wanted: dict[str, str | None]) -> str:
    """The same edit on one command line (grubby's arguments)."""
    tokens = parse_cmdline(line)
    legacy = _legacy(wanted)
    edited = _edit_tokens(tokens, arg_keys(tokens, wanted), wanted, legacy)
    if not legacy:
        _check_pools(tokens, edited, wanted)
    return " ".join(edited)


def _legacy(wanted: dict[str, str | None]) -> bool:
    return not LEGACY.isdisjoint(wanted)


def _partner(key: str) -> str | None:
    """The other half of a pool's pair: hugepagesz[1G] <-> hugepages[1G]."""
    name, bracket, size = key.partition("[")
    if not bracket or name not in ("hugepagesz", "hugepages"):
        return None
    return ("hugepages" if name == "hugepagesz" else "hugepagesz") + bracket + size


def _edit_tokens(tokens: list[str], keys: list[str], wanted: dict[str, str | None],
                 legacy: bool) -> list[str]:
    if legacy:  # a record keyed by name alone: its keys stand for every pool's argument
        wanted = {key: token for key, token in wanted.items() if "[" not in key}
    result: list[tuple[str, str]] = []
    placed = set()
    for key, token in zip(keys, tokens, strict=True):
        if key not in wanted:
            result.append((key, token))
        elif key not in placed and wanted[key] is not None:
            result.append((key, wanted[key]))
            placed.add(key)
        # else: removed, or a duplicate of a key already placed
    for key, token in wanted.items():
        if token and key not in placed:
            result.insert(_insertion(result, key), (key, token))
            placed.add(key)
    return [token for _, token in result]


def _insertion(result: list[tuple[str, str]], key: str) -> int:
    """Where a missing argument goes: a pool's `hugepages=` right after its `hugepagesz=`, its
    `hugepagesz=` right before its `hugepages=`; anything else at the end."""
    partner = _partner(key)
    for index, (other, _) in enumerate(result):
        if partner is not None and other == partner:
            return index if key.startswith("hugepagesz[") else index + 1
    return len(result)


def _check_pools(before: list[str], after: list[str], wanted: dict[str, str | None]) -> None:
    """Refuse an edit after which another pool's argument would belong to another pool."""
    def others(tokens: list[str]) -> list[tuple[str, str]]:
        return [(key, token) for key, token in zip(param_keys(tokens), tokens, strict=True)
                if is_hugetlb(key) and key not in wanted]

    was, will = others(before), others(after)
    if was == will:
        return
    moved = [(key, token) for key, token in was if (key, token) not in will] or was
    key, token = moved[0]
    now = {other for other, mine in zip(param_keys(after), after, strict=True) if mine == token}
    ours = " ".join(token for token in wanted.values() if token and is_hugetlb(param_key(token)))
    then = (f", and would count {_pool(sorted(now - {key})[0])} after the change"
            if now - {key} else ", and would not after the change")
    raise GrubDefaultsError(
        f"cannot set vela's huge page arguments ({ours}) on the kernel command line without "
        f"changing another pool: {token} counts {_pool(key)} now{then} (hugepages= counts pages "
        f"of the size set by the hugepagesz= or default_hugepagesz= before it). Give that pool "
        f"its own size right before it (for 2 MiB pages: hugepagesz=2M {token}) and run again")


def _pool(key: str) -> str:
    size = key.partition("[")[2].rstrip("]")
    return f"pages of {size}" if size else "pages of the default size (2M on x86)"


def grubby_arguments(current: str, wanted: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(--args, --remove-args) for grubby, from the default entry's current arguments; the
    removals go first, in a call of their own.

    grubby sets arguments by name: an added `hugepages=` replaces one already there (grubby's
    own C program: the first of that name not yet replaced; the grubby-bls script: every one of
    that name). So when the huge page arguments change, all of them are removed and then added
    back in the order the edit gives: every pool keeps its pair and its place relative to the
    others (they may move to the end of the line: grubby can only append)."""
    tokens = parse_cmdline(current)
    keys = arg_keys(tokens, wanted)
    edited = parse_cmdline(edit_line(current, wanted))
    present = dict(zip(keys, tokens, strict=True))
    plain = {key: token for key, token in wanted.items() if not is_hugetlb(key)}
    add = [token for key, token in plain.items() if token and present.get(key) != token]
    remove = [present[key] for key, token in plain.items() if token is None and key in present]
    pools_now = [token for key, token in zip(keys, tokens, strict=True) if is_hugetlb(key)]
    pools_then = [token for token in edited if is_hugetlb(param_key(token))]
    if pools_now != pools_then:
        remove += pools_now
        add += pools_then
    return add, remove
