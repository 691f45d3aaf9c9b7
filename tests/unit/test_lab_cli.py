"""The lab's command line (`scripts/lab`, `python -m lab`): what its help says, and the clock
its progress lines carry. Booting hosts is tested in tests/lab."""

from __future__ import annotations

import re
import subprocess

import pytest

from lab.__main__ import COMMANDS, Clock, parser
from tests.support.provider_harness import PROJECT_ROOT


def test_help_lists_every_command_with_what_it_does():
    text = parser().format_help()
    for name, (short, _) in COMMANDS.items():
        assert re.search(rf"^ +{re.escape(name)}\s+{re.escape(short)}$", text, re.M), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_says_what_it_does_and_what_its_arguments_are(name, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert " ".join(COMMANDS[name][1].split()) in text
    if name in {"ssh", "reboot", "power-cycle"}:
        assert "N the host's number: 0 for lab-0" in text


def test_progress_lines_carry_the_time_since_the_command_began(capsys):
    clock = Clock()
    clock("lab-0: SSH ready after 31 s")
    assert re.fullmatch(r"\[ +\d+\.\d s\] lab-0: SSH ready after 31 s\n", capsys.readouterr().out)


def test_scripts_lab_runs_the_lab_command_line():
    shown = subprocess.run([str(PROJECT_ROOT / "scripts" / "lab"), "--help"], text=True,
                           capture_output=True, check=True).stdout
    assert "usage: lab" in shown and "power-cycle" in shown
