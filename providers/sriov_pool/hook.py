"""The libvirt qemu hook SriovPool installs: ATS on the pool's VFs again once a guest has opened
them. Pure.

Why: vfio-pci resets a function when QEMU opens it (drivers/vfio/pci/vfio_pci_core.c,
vfio_pci_core_enable -> pci_try_reset_function), and the restore after the reset
(drivers/pci/pci.c pci_restore_state) writes ATS back only when the kernel enabled it itself
(drivers/pci/ats.c pci_restore_ats_state returns unless dev->ats_enabled, which only
pci_enable_ats sets). The pool's masked write through sysfs `config` is user space's, so every
guest start leaves its VFs with ATS off. The same reset runs when the guest closes them
(vfio_pci_core_disable), so a stopped guest's VFs drift too.

How (libvirt docs/hooks.rst, src/util/virhook.c): since libvirt 6.5 every executable in
/etc/libvirt/hooks/qemu.d/ runs, in alphabetical order, for each qemu hook event with the
arguments `guest operation sub-operation extra` and the domain's full XML on stdin. `started
begin -` comes once the QEMU process runs, its devices opened (src/qemu/qemu_process.c
qemuProcessFinishStartup: after the CPUs are resumed); `release end` after libvirt released a
stopped guest's resources. The hook re-writes ATS Enable on the pool's VFs the domain holds:
a VF named by its host address (`<hostdev>`, `<interface type='hostdev'>`: libvirt writes
`domain='0x0000' bus='0x44' slot='0x10' function='0x0'`), or every VF of the pool when the
domain names the pool's network. (On a Debian 12 lab host, libvirt 9.0 gave `started` a VF
taken from a hostdev network as `<interface type='hostdev'>` with that VF's address; only
`prepare` still showed `network='...'`. The network rule covers a version that passes the
network.) Its output stays empty: each qemu.d script is also a filter of the XML, and empty
output means "unchanged".
It never calls back into libvirt (the docs: a deadlock). A write that fails exits non-zero, so
libvirt refuses the start and logs the message (a guest would otherwise run without ATS, unseen).

libvirt looks for hooks when the daemon starts and again when it reloads (virHookInitialize,
called from virHookCall on the daemon's SIGHUP reload): `reload_call` makes a running daemon see a
hook that was just created. (On that lab host, a guest started after the hook was written but
before the reload ran no hook at all.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import shell
from ..common.registers import Register
from .bootunit import HEADER
from .spec import SriovPoolArgs

if TYPE_CHECKING:
    from .target import PoolTarget

# The operations after which a pool's VFs were reset by vfio (opened, or closed again).
OPERATIONS = ("started", "release")
# The libvirt daemons that run qemu hooks: the monolithic one (Debian 12's only one) and the
# modular QEMU driver daemon (Fedora, RHEL 9). Each is reloaded only if it is active: a reload
# is its unit's ExecReload (SIGHUP); one not running finds the hook when it starts; a unit
# that is not installed is no error (`systemctl try-reload-or-restart` fails on one: exit 5,
# as on a Debian 12 lab host, which has no virtqemud.service).
DAEMONS = ("libvirtd.service", "virtqemud.service")

_BODY = r'''
# libvirt's qemu hook: $1 guest, $2 operation, $3 sub-operation, $4 extra; the domain XML on
# stdin, read whole before anything else (libvirt writes all of it).
xml=$(cat)
case ${2:-} in
  @OPERATIONS@) ;;
  *) exit 0 ;;
esac
vela_holds() {  # TEXT...: whether the domain XML names any of them
  for text in "$@"; do
    case $xml in *"$text"*) return 0 ;; esac
  done
  return 1
}
status=0
'''


def held_registers(target: PoolTarget) -> list[Register]:
    """The VF registers a reset loses: those that set bits (ATS Enable). A register that wants
    the bits clear needs nothing: a function reset leaves ATS Control at its power-on 0 (PCIe
    Base Specification, ATS Extended Capability, ATS Control Register: Enable defaults to 0b)."""
    return [register for _, register in sorted(target.registers.items())
            if register.value & register.mask]


def hook_script(spec: SriovPoolArgs, target: PoolTarget) -> str | None:
    """The hook, or None (absent) when the pool holds no ATS for a reset to lose."""
    registers = held_registers(target)
    if not registers:
        return None
    network = [f"network='{spec.network.name}'"] if spec.network else []
    calls = [_BODY.strip("\n").replace("@OPERATIONS@", "|".join(OPERATIONS))]
    for register in registers:
        held = shell.call("vela_holds", libvirt_address(register.address), *network)
        write = shell.call("vela_cfg_write", register.address, register.offset, register.value,
                           register.mask)
        calls.append(f"if {held}; then\n  ({write}) || status=1\nfi")
    calls.append('exit "$status"')
    header = (f"{HEADER}# libvirt qemu hook: writes {register_summary(registers)} again on "
              f"the VFs of {spec.pf} a guest holds,\n# once vfio-pci has reset them "
              f"({', '.join(OPERATIONS)}).\n")
    return shell.boot_script(header, calls)


def reload_call() -> str:
    """Make each running libvirt daemon look for hooks again (it caches what it found)."""
    units = " ".join(shell.quote(unit) for unit in DAEMONS)
    return (f"for unit in {units}; do "
            'vela_system systemctl -q is-active "$unit" || continue; '
            'vela_system systemctl reload "$unit" || vela_fail "cannot reload $unit: it would '
            'not run the new qemu hook until it restarts"; done')


def libvirt_address(address: str) -> str:
    """A PCI address as libvirt writes a host device's source address."""
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return (f"domain='0x{int(domain, 16):04x}' bus='0x{int(bus, 16):02x}' "
            f"slot='0x{int(slot, 16):02x}' function='0x{int(function, 16):x}'")


def register_summary(registers: list[Register]) -> str:
    return " and ".join(sorted({register.what for register in registers}))
