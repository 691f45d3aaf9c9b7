"""Rebooting a host over SSH and waiting, with a deadline, until it is back in a new boot."""

from __future__ import annotations

import time

from ..errors import HostError, VelaError
from .base import Host

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id(host: Host) -> str:
    return host.read_file(BOOT_ID, timeout=30).decode().strip()


def reboot_and_wait(host: Host, deadline: float, *, poll: float = 3.0) -> str:
    """Reboot the host the way an operator would and return its new boot id. Raises
    `HostError` if it is not reachable in a new boot within `deadline` seconds."""
    before = boot_id(host)
    # Detached, so the command returns before sshd goes down with the system.
    host.run(["sh", "-c", "nohup systemctl reboot > /dev/null 2>&1 &"], timeout=30)
    started = time.monotonic()
    last: Exception | None = None
    time.sleep(poll)
    while time.monotonic() - started < deadline:
        try:
            current = boot_id(host)
            if current != before:
                return current
        except (VelaError, OSError) as exc:
            last = exc  # down, or sshd not up yet
        time.sleep(poll)
    raise HostError(host.name, f"did not come back from a reboot within {deadline:g} s "
                               f"(last error: {last}); check its console")
