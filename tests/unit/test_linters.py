"""The linters, run by the test suite: ruff over all the Python, shellcheck over all the shell.

This file owns linting in the suite (scripts/test and so CI run it, `--fast` included):
- ruff, the virtualenv's (pinned in requirements.txt), over every Python file in the
  repository, with the configuration in pyproject.toml;
- shellcheck, Debian's (installed by scripts/setup), over every shell script in the repository:
  scripts/*, .ci/run, providers/facts/gather.sh (POSIX sh, by its `shellcheck shell=` directive),
  the lab image's scripts, and any other file with a shell shebang or a `.sh` name;
- the shell the providers generate, rendered in a test and checked with `shellcheck()` below
  (those tests belong in this file too).
The virtualenv, .git and local state (.lab, .pulumi-state, caches) are not the project's code
and are left out. A missing linter fails, saying to run scripts/setup: the suite never passes
without having linted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = ROOT / ".venv" / "bin" / "ruff"
# Directory names that hold no code of the project's own, wherever they are.
NOT_CODE = {".git", ".venv", ".lab", ".pulumi-state", ".ruff_cache", ".pytest_cache",
            "__pycache__"}
SHEBANG = re.compile(rb"#![^\n]*\b(?:sh|bash|dash|ash|ksh)\b")
# The shell scripts the issue names; the search below must find each of them.
NAMED_SHELL = [*sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "scripts").iterdir()
                       if p.is_file()), ".ci/run", "providers/facts/gather.sh"]


def _project_files() -> list[Path]:
    files = []
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = sorted(name for name in subdirectories if name not in NOT_CODE)
        files += [Path(directory, name) for name in sorted(names)]
    return files


def _is_shell(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as file:
        return bool(SHEBANG.match(file.readline(200)))


def _shell_files() -> list[str]:
    return [path.relative_to(ROOT).as_posix() for path in _project_files() if _is_shell(path)]


def _ruff() -> str:
    if not os.access(RUFF, os.X_OK):
        pytest.fail(f"ruff is not installed in the virtualenv ({RUFF.relative_to(ROOT)}): run "
                    "scripts/setup", pytrace=False)
    return str(RUFF)


def shellcheck(*arguments: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run shellcheck from ROOT with `arguments`. To check text rather than files, pass it as
    `script`, with `--shell=DIALECT` and `-` among the arguments."""
    program = shutil.which("shellcheck")
    if program is None:
        pytest.fail("shellcheck is not installed: run scripts/setup (its apt stage installs it)",
                    pytrace=False)
    return subprocess.run([program, "--color=never", *arguments], cwd=ROOT, input=script,
                          capture_output=True, text=True)


def test_ruff_is_the_pinned_version():
    pinned = re.search(r"^ruff==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned, "requirements.txt pins no ruff"
    version = subprocess.run([_ruff(), "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    assert version == pinned[1], (f"ruff {version} in .venv, but requirements.txt pins "
                                  f"{pinned[1]}: run scripts/setup")


def test_ruff_checks_every_python_file():
    """An exclude in pyproject.toml cannot quietly take code out of the check."""
    listed = subprocess.run([_ruff(), "check", "--no-cache", "--show-files", "."], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    checked = {Path(line.strip()).resolve() for line in listed.splitlines() if line.strip()}
    python = {path.resolve() for path in _project_files() if path.suffix == ".py"}
    assert Path(__file__).resolve() in python
    missed = sorted(path.relative_to(ROOT).as_posix() for path in python - checked)
    assert not missed, f"ruff leaves out these Python files: {missed}"


def test_ruff_passes():
    result = subprocess.run([_ruff(), "check", "--no-cache", "--output-format=concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"ruff check (exit {result.returncode}); `.venv/bin/ruff check --fix` fixes "
                    f"what is marked [*]:\n{result.stdout}{result.stderr}", pytrace=False)


def test_every_named_shell_script_is_found():
    found = _shell_files()
    assert [name for name in NAMED_SHELL if name not in found] == []


def test_shellcheck_passes():
    files = _shell_files()
    result = shellcheck("--", *files)
    if result.returncode != 0:
        pytest.fail(f"shellcheck on {len(files)} scripts (exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}", pytrace=False)
