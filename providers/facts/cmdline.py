"""The kernel command line, split the way the kernel splits it.

The kernel separates parameters by whitespace, except inside double quotes (`foo="a b"`); a
parameter is `key` or `key=value`, and dashes and underscores in the key are equivalent. Tokens
are kept verbatim (quotes included) so that a rewrite can put unrelated arguments back exactly
as found.

Huge page arguments are the exception to "one key, one setting": `hugepages=N` counts pages of
the size set just before it by `hugepagesz=` or `default_hugepagesz=`, so one line can hold a
pool per size (`hugepagesz=2M hugepages=1024 hugepagesz=1G hugepages=16`); a `hugepages=` before
any size counts pages of the default size (Documentation/admin-guide/kernel-parameters.txt,
hugepages= and hugepagesz=; Documentation/admin-guide/mm/hugetlbpage.rst, "Hugetlb boot command
line parameter semantics"; mm/hugetlb.c, hugepages_setup). `param_keys` keys them by pool.
"""

from __future__ import annotations

import re

HUGETLB = ("default_hugepagesz", "hugepagesz", "hugepages")  # the huge page pool arguments
_SIZE = re.compile(r"^(\d+)([KMGTPE]?)$", re.IGNORECASE)
_UNITS = "KMGTPE"


def parse_cmdline(text: str) -> list[str]:
    """Split a command line into its raw tokens."""
    tokens: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text.strip():
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens


def param_key(token: str) -> str:
    """The normalised key of a token (`intel_iommu` for `intel-iommu=on`)."""
    return token.strip('"').split("=", 1)[0].replace("-", "_")


def param_value(token: str) -> str | None:
    """The value of a token without surrounding quotes, None for a bare flag."""
    bare = token.strip('"') if token.startswith('"') else token
    if "=" not in bare:
        return None
    return bare.split("=", 1)[1].strip('"')


def cmdline_params(text: str) -> list[tuple[str, str | None]]:
    """(key, value) pairs in order; a key given twice appears twice (the kernel uses the last
    for most parameters, and passes every instance to parsers that accumulate)."""
    return [(param_key(token), param_value(token)) for token in parse_cmdline(text)]


def hugepage_size(value: str) -> str:
    """A huge page size the way the kernel reads it (memparse: a K, M, G... suffix, any case),
    written in its largest whole unit: `1024M` and `1g` are `1G`. Anything else as given."""
    match = _SIZE.match(value.strip().strip('"'))
    if not match:
        return value
    size = int(match[1]) << (10 * (_UNITS.find(match[2].upper()) + 1) if match[2] else 0)
    for index in range(len(_UNITS) - 1, -1, -1):
        unit = 1 << (10 * (index + 1))
        if size and size % unit == 0:
            return f"{size // unit}{_UNITS[index]}"
    return str(size)


def param_keys(tokens: list[str], before: list[str] = (),
               after: list[str] = ()) -> list[str]:
    """The key of each token where it stands on the line (`before` and `after`: the rest of the
    line around these tokens). As `param_key`, except for huge page pools: `hugepagesz=1G` is
    `hugepagesz[1G]` and a `hugepages=` is `hugepages[SIZE]`, SIZE set by the `hugepagesz=` or
    `default_hugepagesz=` before it, else by the line's `default_hugepagesz=` (a `hugepages=`
    before any size counts default-size pages); plain `hugepages` when the line gives no size
    at all (the architecture's default)."""
    line = [*before, *tokens, *after]
    defaults = [param_value(token) for token in line if param_key(token) == HUGETLB[0]]
    default = hugepage_size(defaults[0]) if defaults and defaults[0] else None
    keys: list[str] = []
    size: str | None = None
    for token in line:
        key, value = param_key(token), param_value(token)
        if key in HUGETLB[:2] and value:
            size = hugepage_size(value)
            key = f"{key}[{size}]" if key == "hugepagesz" else key
        elif key == "hugepages" and (size or default):
            key = f"hugepages[{size or default}]"
        keys.append(key)
    return keys[len(before):len(before) + len(tokens)]


def is_hugetlb(key: str) -> bool:
    """Whether a key (plain or as `param_keys` gives it) is a huge page pool argument."""
    return key.split("[", 1)[0] in HUGETLB
