"""The kernel command line, split the way the kernel splits it.

The kernel separates parameters by whitespace, except inside double quotes (`foo="a b"`); a
parameter is `key` or `key=value`, and dashes and underscores in the key are equivalent. Tokens
are kept verbatim (quotes included) so that a rewrite can put unrelated arguments back exactly
as found.
"""

from __future__ import annotations


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
