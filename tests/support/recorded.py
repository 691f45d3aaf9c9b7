"""Access to the recorded real outputs under tests/data/recorded (see its INDEX.md)."""

from __future__ import annotations

from pathlib import Path

RECORDED = Path(__file__).resolve().parent.parent / "data" / "recorded"
MARKER = "# ---- verbatim output below this line ----"


def recorded(relative: str) -> str:
    """The verbatim output of a recorded file, without its provenance header."""
    text = (RECORDED / relative).read_text()
    if MARKER not in text:
        raise ValueError(f"{relative} has no verbatim-output marker")
    return text.split(MARKER + "\n", 1)[1]


def recorded_files(folder: str, suffix: str = ".txt") -> list[Path]:
    return sorted(path for path in (RECORDED / folder).iterdir()
                  if path.name.endswith(suffix) and ".lspci-vvv" not in path.name)
