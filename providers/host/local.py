"""The host vela runs on, optionally with its files rooted at a directory.

Used to run vela on the hypervisor itself, and by tests against a fake sysfs/procfs tree. Commands
go through `sh -c` exactly as an SSH server would run them.
"""

from __future__ import annotations

import os
import signal
import subprocess

from ..errors import CommandTimeout
from .base import CommandResult, Host


class LocalHost(Host):
    def __init__(self, sysroot: str = "/", name: str | None = None, sudo: bool = False) -> None:
        super().__init__(name or (f"local (root {sysroot})" if sysroot not in ("", "/")
                                  else "local"), sysroot, sudo)

    def _execute(self, command: str, stdin: bytes | None, deadline: float) -> CommandResult:
        # A new session makes the command a process group we can kill whole if the host-side
        # `timeout` itself hangs.
        process = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(stdin or b"", timeout=deadline)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise CommandTimeout(self.name, command, -1, stdout.decode(errors="replace"),
                                 stderr.decode(errors="replace"),
                                 reason=f"did not return within {deadline:g} s") from None
        return CommandResult(command, process.returncode, stdout, stderr)
