"""The one interface every provider uses to act on a hypervisor host.

A `Host` runs a command (an argv list, never a shell string built by hand), runs a script in one
exec, and reads and writes files. Subclasses only provide `_execute`: how a finished shell
command line travels (SSH exec, local subprocess). Everything else - quoting, the host-side
timeout, error reporting, the filesystem root - lives here so that the SSH and local hosts behave
identically.

`sysroot` prefixes every file path and is handed to fact-gathering scripts: "/" on a real host,
a directory of a fake sysfs/procfs tree in tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..common import shell
from ..errors import CommandFailed, CommandTimeout, InvalidValue
from ..validate import absolute_path

DEFAULT_TIMEOUT = 120.0
# GNU and busybox `timeout` exit with 124 when the deadline hit, 137 when KILL was needed.
_TIMED_OUT = {124, 137}
# After TERM, how long the host-side `timeout` waits before KILL.
_KILL_AFTER = 5
# How much longer than the host-side deadline the client waits before giving up on the channel.
CLIENT_GRACE = 10.0


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind. `stdout` is raw bytes; `text` decodes it."""

    command: str
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


def shell_command(argv: Sequence[str]) -> str:
    """Join argv into one shell command line, quoting every argument."""
    if not argv:
        raise InvalidValue("a command needs at least a program name")
    for arg in argv:
        if not isinstance(arg, str):
            raise InvalidValue(f"command argument {arg!r} is not a string")
        if "\0" in arg:
            raise InvalidValue(f"command argument {arg!r} contains a NUL byte")
    return " ".join(shell.quote(arg) for arg in argv)


class Host(ABC):
    """A machine we can run commands on. Thread-safe: providers call it from 4 threads at once."""

    def __init__(self, name: str, sysroot: str = "/", sudo: bool = False) -> None:
        self.name = name
        self.sysroot = "/" if sysroot in ("", "/") else absolute_path(sysroot, "sysroot")
        self.sudo = sudo

    # -- commands ------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
            stdin: bytes | None = None, check: bool = True) -> CommandResult:
        """Run argv on the host with a deadline; raise `CommandFailed` on a non-zero exit.

        The host's own `timeout` enforces the deadline so that the command and its children are
        killed there, not just abandoned by us.
        """
        if timeout <= 0:
            raise InvalidValue(f"timeout must be positive, got {timeout!r}")
        wrapped = ["timeout", "-k", str(_KILL_AFTER), f"{timeout:g}", *argv]
        if self.sudo:
            wrapped = ["sudo", "-n", "--", *wrapped]
        command = shell_command(wrapped)
        result = self._execute(command, stdin, timeout + _KILL_AFTER + CLIENT_GRACE)
        if result.exit_code in _TIMED_OUT:
            raise CommandTimeout(self.name, shell_command(argv), result.exit_code,
                                 result.text, result.error_text,
                                 reason=f"did not finish within {timeout:g} s and was killed")
        if check and result.exit_code != 0:
            raise CommandFailed(self.name, shell_command(argv), result.exit_code,
                                result.text, result.error_text)
        return result

    def run_script(self, script: str, args: Sequence[str] = (), *,
                   timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> CommandResult:
        """Run a POSIX sh script in a single exec; `args` become $1, $2, ..."""
        return self.run(["sh", "-s", "--", *args], stdin=script.encode(), timeout=timeout,
                        check=check)

    # -- files ---------------------------------------------------------------------------------

    def path(self, path: str) -> str:
        """Where `path` (absolute, as on a real host) lives under this host's sysroot."""
        clean = absolute_path(path)
        return clean if self.sysroot == "/" else self.sysroot + clean

    def read_file(self, path: str, *, timeout: float = 60.0) -> bytes:
        return self.run(["cat", "--", self.path(path)], timeout=timeout).stdout

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, atomic: bool = True,
                   timeout: float = 60.0) -> None:
        """Write a file, creating missing parent directories. Atomic writes go through a temp
        file and rename, so a reader or a crash never sees half a file; sysfs attributes need
        `atomic=False` (a plain write into the existing attribute)."""
        target = self.path(path)
        if not atomic:
            self.run(["sh", "-c", 'cat > "$1"', "sh", target], stdin=data, timeout=timeout)
            return
        script = ('mkdir -p -- "${1%/*}" || exit 1; umask 077; '
                  'tmp=$(mktemp "$1.vela-XXXXXX") || exit 1; '
                  'if cat > "$tmp" && chmod "$2" "$tmp" && mv -f "$tmp" "$1"; then exit 0; fi; '
                  'rm -f "$tmp"; exit 1')
        self.run(["sh", "-c", script, "sh", target, f"{mode:o}"], stdin=data, timeout=timeout)

    # -- transport -----------------------------------------------------------------------------

    @abstractmethod
    def _execute(self, command: str, stdin: bytes | None, deadline: float) -> CommandResult:
        """Run one shell command line and collect its result, giving up after `deadline` s."""

    def close(self) -> None:  # noqa: B027 - optional: most hosts hold nothing to release
        """Release what this host holds (nothing by default)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
