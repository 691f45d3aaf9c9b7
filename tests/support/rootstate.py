"""What a fake host root holds, file by file: compared before and after to prove that a delete
gave everything back."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Changed by every boot (the boot id) or kept by the firmware stand-in for itself.
NOT_STATE = ("proc/sys/kernel/random", "var/lib/mstconfig-standin")


def root_snapshot(root: Path) -> dict[str, str]:
    """Each path under `root`: a link's target, a file's sha256, or "dir"."""
    state = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative.startswith(NOT_STATE):
            continue
        if path.is_symlink():
            state[relative] = "-> " + str(path.readlink())
        elif path.is_file():
            state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[relative] = "dir"
    return state
