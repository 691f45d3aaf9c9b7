"""The boot-time unit HostTuning installs: what the kernel forgets at every reboot, re-applied.

Huge pages per NUMA node (when the command line alone does not place them as asked), vfio-pci
bindings by address, and PCIe register values (ACS, Max Read Request) are lost at reboot.
A oneshot systemd unit runs the rendered script early, before libvirt starts guests. Pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import shell
from .observe import BOOT_SCRIPT, UNIT_FILE

if TYPE_CHECKING:
    from .target import Target

HEADER = "# Written by vela (HostTuning); removed when the resource is deleted.\n"

UNIT = f"""{HEADER}[Unit]
Description=vela: re-apply host tuning that does not survive a reboot
DefaultDependencies=no
After=local-fs.target systemd-modules-load.service systemd-sysctl.service
Before=libvirtd.service virtqemud.service sysinit.target
ConditionPathExists={BOOT_SCRIPT}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={BOOT_SCRIPT}

[Install]
WantedBy=multi-user.target
"""


def boot_calls(target: Target) -> list[str]:
    calls = []
    if target.hugepages_kib is not None and target.hugepages_total is None:
        calls += [shell.call("vela_hugepages", node, target.hugepages_kib, count)
                  for node, count in sorted(target.hugepages.items())]
    calls += [shell.call("vela_bind", address, driver or "")
              for address, driver in sorted(target.drivers.items()) if driver]
    calls += [shell.call("vela_cfg_write", register.address, register.offset, register.value,
                         register.mask)
              for _, register in sorted(target.registers.items())]
    return calls


def files(target: Target) -> dict[str, str | None]:
    """The boot script and unit for `target` (both absent when there is nothing to re-apply)."""
    calls = boot_calls(target)
    if not calls:
        return {BOOT_SCRIPT: None, UNIT_FILE: None}
    # One failure (a device gone) must not stop the other actions.
    return {BOOT_SCRIPT: shell.boot_script(HEADER, calls, keep_going=True), UNIT_FILE: UNIT}
