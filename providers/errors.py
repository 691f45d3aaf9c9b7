"""The error hierarchy of vela.

Every error a user can meet derives from `VelaError` and carries a message that alone says what
failed, where, and what to do: the Pulumi engine shows provider exceptions to the user as they
are. Subclasses also inherit the matching builtin (ValueError, TimeoutError, ...) so callers can
catch them the ordinary way.
"""

from __future__ import annotations

from typing import ClassVar


class VelaError(Exception):
    """Base of every error vela raises on purpose.

    Through a provider, the error's first line also says which resource call failed and at
    which step (`during`, set by `providers.common.progress.operation`), and, for errors whose
    own message cannot know the remedy (a command that failed, a connection that dropped), the
    class's `fix`."""

    fix: ClassVar[str] = ""
    during: tuple[str, str] | None = None  # (host, "HostTuning create failed while ...")

    def __str__(self) -> str:
        message = super().__str__()
        if self.during is None:
            return message
        host, during = self.during
        first, newline, rest = message.partition("\n")
        first = first.removeprefix(f"{host}: ")
        if self.fix and self.fix not in message:
            first = f"{first.rstrip(':')}; {self.fix}"
        return f"{host}: {during}: {first}{newline}{rest}"


class InvalidValue(VelaError, ValueError):
    """An input failed validation before anything was touched."""


class HostError(VelaError):
    """Something went wrong while talking to one host. `host` names it for the message."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class HostUnreachable(HostError, ConnectionError):
    """No SSH session could be set up: refused, timed out, name not resolved, no SSH banner."""


class ConnectionLost(HostError, ConnectionError):
    """The connection dropped while a command ran; whether the command finished is unknown."""

    fix = ("run `pulumi up` again once the host answers: it reads the host first, so nothing "
           "is applied twice")


class HostKeyError(HostError):
    """The host's SSH key could not be trusted. Never silently accepted."""


class UnknownHostKey(HostKeyError):
    """The host presented a key that is not pinned and not in the known_hosts file."""


class HostKeyMismatch(HostKeyError):
    """The host presented a key different from the pinned or known one."""


class AuthenticationFailed(HostError, PermissionError):
    """The host refused our client key(s)."""


class ClientKeyError(VelaError, ValueError):
    """The client private key could not be loaded (bad file, bad passphrase, empty agent)."""


class CommandFailed(HostError):
    """A command on a host exited non-zero. Carries everything needed to understand why.

    A vela script says what it was doing when it failed (`vela_fail` in common/shell.py prints
    "vela: WHAT" and exits): that goes in the first line, the whole output below it."""

    fix = ("fix what the host reports, then run `pulumi up` again: it reads the host first and "
           "applies only what is still missing")

    def __init__(self, host: str, command: str, exit_code: int, stdout: str, stderr: str,
                 reason: str | None = None) -> None:
        detail = stderr.strip() or stdout.strip() or "(no output)"
        if len(detail) > 2000:
            detail = "..." + detail[-2000:]
        why = reason or f"exited with status {exit_code}"
        said = _vela_said(stderr)
        super().__init__(host, f"command {_shorten(command)} {why}"
                               f"{': ' + said if said else ''}:\n{detail}")
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class CommandTimeout(CommandFailed, TimeoutError):
    """A command ran past its deadline and was killed (on the host, with its children)."""

    fix = ("find out on the host what it waits for (the output below), then run `pulumi up` "
           "again")


class DomainXmlError(VelaError, ValueError):
    """A libvirt domain's definition could not be read, so what it holds is unknown."""


class FactsError(HostError):
    """The hardware facts of a host could not be read or made sense of."""


def _vela_said(stderr: str) -> str:
    """The first line of the last message a vela script failed with ("" if none): `vela_fail`
    prints "vela: WHAT" and exits; "vela: sysroot ..." lines are notes, not failures."""
    said = [line.removeprefix("vela: ").strip().rstrip(":") for line in stderr.splitlines()
            if line.startswith("vela: ") and not line.startswith("vela: sysroot ")]
    return said[-1] if said else ""


def _shorten(command: str, limit: int = 300) -> str:
    """Quote a command for a message, cutting the middle of very long ones (scripts)."""
    one_line = " ".join(command.split())
    if len(one_line) > limit:
        one_line = one_line[: limit // 2] + " ... " + one_line[-limit // 2:]
    return f"`{one_line}`"


# -- the resources' own errors: what a resource could not do as asked ---------------------------

class HostTuningError(VelaError):
    """HostTuning could not do what was asked; the message says what and what to do."""


class SriovPoolError(VelaError):
    """The pool cannot be set up as asked; the message says why and what to do."""


class GpuVmError(VelaError):
    """The guest cannot be made as asked; the message says why and what to do."""
