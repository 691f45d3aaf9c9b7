"""Debian mirrors for the lab, derived from this machine's own apt configuration.

The lab image is Debian 12 and QEMU >= 8 comes from bookworm-backports; both must come from the
mirror this machine already uses (a local mirror, a proxy, a snapshot), never from a host name
written into the project. This module reads deb822 `.sources` files and one-line `.list` files
and returns the Debian entries, so callers can write the same mirrors for other suites.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None

    def deb822(self, suites: tuple[str, ...] | None = None) -> str:
        lines = ["Types: deb", f"URIs: {self.uri}", f"Suites: {' '.join(suites or self.suites)}",
                 f"Components: {' '.join(self.components)}"]
        if self.signed_by:
            lines.append(f"Signed-By: {self.signed_by}")
        return "\n".join(lines) + "\n"


def parse_deb822(text: str) -> list[AptSource]:
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            sources.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                     tuple(fields.get("components", "").split()),
                                     fields.get("signed-by")))
    return sources


def parse_one_line(text: str) -> list[AptSource]:
    sources = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[(?P<options>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)"
                         r"\s*(?P<components>.*)$", line)
        if not match:
            continue
        options = dict(option.split("=", 1) for option in (match["options"] or "").split()
                       if "=" in option)
        sources.append(AptSource(match["uri"], (match["suite"],),
                                 tuple(match["components"].split()), options.get("signed-by")))
    return sources


def machine_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    found = []
    for path in [apt_dir / "sources.list", *sorted(Path(p) for p in
                                                   glob.glob(str(apt_dir / "sources.list.d/*")))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            found.extend(parse_deb822(text))
        elif path.suffix == ".list" or path.name == "sources.list":
            found.extend(parse_one_line(text))
    return found


def debian_sources(release: str = "bookworm", apt_dir: Path = APT_DIR) -> list[AptSource]:
    """The machine's entries for `release` and its -updates/-security suites (main only is
    enough for the lab). Raises when the machine has no source for `release`."""
    wanted = {release, f"{release}-updates", f"{release}-security"}
    chosen = []
    for source in machine_sources(apt_dir):
        suites = tuple(suite for suite in source.suites if suite in wanted)
        if suites and "main" in source.components:
            chosen.append(AptSource(source.uri, suites, ("main",), source.signed_by))
    if not any(release in source.suites for source in chosen):
        raise RuntimeError(f"this machine's apt sources have no Debian '{release}' entry to "
                           f"take a mirror from; add one to /etc/apt/sources.list.d/")
    return chosen


def backports_source(release: str = "bookworm", apt_dir: Path = APT_DIR) -> AptSource:
    """The -backports suite on the same mirror as the machine's `release` entry."""
    main = next(source for source in debian_sources(release, apt_dir)
                if release in source.suites)
    return AptSource(main.uri, (f"{release}-backports",), ("main",), main.signed_by)


if __name__ == "__main__":  # used by scripts/setup: print the backports .sources stanza
    print(backports_source().deb822(), end="")
