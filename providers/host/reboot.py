"""Rebooting a host and waiting, with a deadline, until it answers over SSH in a new boot.

This module owns the one implementation of "wait until a host is back": HostTuning's reboots
(`reboot_and_wait`) and the lab's first boots, reboots and power cycles (lab/hosts.py) all wait
through `wait_for_new_boot`. What only the lab can do (watch an emulated console for a kernel
panic, see QEMU exit, print progress) comes in as the `check` and `progress` callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import HostError, VelaError
from .base import Host
from .ssh import SshHost

# A random UUID the kernel makes once per boot: a different value means a different boot, and
# reading it needs nothing but a shell (proc(5): /proc/sys/kernel/random/boot_id).
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# How often a long wait says it is still waiting (and why: the last poll's answer).
PROGRESS_EVERY = 30.0


class BootTimeout(HostError, TimeoutError):
    """The host did not answer in a new boot within the deadline. `last` is the error of the
    last poll, or None when the host last answered from the boot it was asked to leave."""

    def __init__(self, host: str, message: str, last: Exception | None) -> None:
        super().__init__(host, message)
        self.last = last


def boot_id(host: Host) -> str:
    return host.read_file(BOOT_ID, timeout=30).decode().strip()


def request_reboot(host: Host) -> None:
    """Ask the host to reboot the way an operator would (`systemctl reboot`)."""
    # Detached, so the command returns before sshd goes down with the system.
    host.run(["sh", "-c", "nohup systemctl reboot > /dev/null 2>&1 &"], timeout=30)


def wait_for_new_boot(host: Host, before: str | None, deadline: float, *, poll: float = 3.0,
                      progress: Callable[[str], None] | None = None,
                      check: Callable[[], None] | None = None) -> str:
    """Poll the host's boot id until it answers with one other than `before` (any answer when
    `before` is None: a first boot, or a power cycle of a host that was not answering) and
    return it. Raises `BootTimeout` after `deadline` seconds.

    `check()` runs before every poll and ends the wait by raising (the lab: QEMU exited, the
    kernel panicked); `progress(line)` hears every PROGRESS_EVERY s that the host is not back
    yet and why, and that it is back and after how long."""
    started = time.monotonic()
    last: Exception | None = None
    note_at = started + PROGRESS_EVERY
    while True:
        if check is not None:
            check()
        try:
            current = boot_id(host)
        except (VelaError, OSError) as exc:
            last = exc  # down, sshd not up yet, or its key not yet in place
            _drop_connection(host)
        else:
            if current != before:
                if progress is not None:
                    progress(f"{host.name}: SSH ready after {time.monotonic() - started:.0f} s")
                return current
            last = None
        if time.monotonic() - started >= deadline:
            break
        if progress is not None and time.monotonic() >= note_at:
            note_at += PROGRESS_EVERY
            why = str(last).splitlines()[0].removeprefix(f"{host.name}: ") if last \
                else "it still answers from the old boot"
            progress(f"{host.name}: not back after {time.monotonic() - started:.0f} s of "
                     f"{deadline:g} s ({why})")
        time.sleep(poll)
    state = f"last error: {last}" if last else "it still answers from the boot it was in"
    raise BootTimeout(host.name, f"did not answer over SSH in a new boot within {deadline:g} s "
                                 f"({state}); check its console", last)


def reboot_and_wait(host: Host, deadline: float, *, poll: float = 3.0,
                    progress: Callable[[str], None] | None = None,
                    check: Callable[[], None] | None = None) -> str:
    """Reboot the host the way an operator would and return its new boot id. Raises
    `BootTimeout` (a `HostError`) if it is not reachable in a new boot within `deadline`
    seconds of the request."""
    before = boot_id(host)
    request_reboot(host)
    return wait_for_new_boot(host, before, deadline, poll=poll, progress=progress, check=check)


def _drop_connection(host: Host) -> None:
    """After a failed poll, the host's pooled SSH transport (if one is left) belongs to a boot
    that is going or gone: drop that one, so the next poll connects afresh, and leave every
    other host's connection alone. A transport to a host that vanished without closing TCP
    stays "active" (paramiko's keepalive is sent with wait=False, so nothing notices) and would
    cost each later poll the connect timeout before the pool gave up on it."""
    if isinstance(host, SshHost):
        host.drop_connection()
