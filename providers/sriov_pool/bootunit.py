"""The boot unit SriovPool installs: the kernel forgets VFs at every reboot, so a oneshot unit
re-creates them with the same count, settings, driver and registers, after HostTuning's unit
(host settings first) and before libvirt starts guests. Pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import shell
from ..facts.models import PciDevice
from .observe import VfState
from .spec import SriovPoolArgs

if TYPE_CHECKING:
    from .target import PoolTarget, VfTarget

# What a freshly created VF has: settings equal to these need no command at boot.
FRESH = VfState(index=-1, mac=None, vlan=0, qos=0, spoofchk=True, trust=False, link_state="auto")
HEADER = "# Written by vela (SriovPool); removed when the resource is deleted.\n"


def unit_text(spec: SriovPoolArgs, script: str) -> str:
    return (f"{HEADER}[Unit]\nDescription=vela: the VFs of {spec.pf}, re-created at boot\n"
            # After HostTuning's unit: host settings (the PF's registers, vfio-pci loaded),
            # then the VFs, then their settings (this script). Both ways round would be a cycle:
            # HostTuning's unit runs before sysinit.target, this one (default dependencies)
            # after it.
            "After=systemd-udev-settle.service systemd-modules-load.service "
            "vela-host-tuning.service\n"
            "Wants=systemd-udev-settle.service\n"
            "Before=libvirtd.service virtqemud.service\n\n"
            f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={script}\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


def boot_script(spec: SriovPoolArgs, target: PoolTarget, pf: PciDevice) -> str:
    """Re-create the VFs as configured: count, settings that differ from a fresh VF, driver,
    registers. VF addresses are stable (the PF's SR-IOV offset and stride fix them)."""
    calls = [shell.call("vela_sysfs_write", autoprobe_path(pf), target.autoprobe)] \
        if target.autoprobe is not None else []
    if target.pf_mtu:
        calls.append(shell.call("vela_mtu", pf.address, target.pf_mtu))
    if target.pf_up:
        calls.append(shell.call("vela_link", pf.address, "up"))
    calls.append(shell.call("vela_sriov_numvfs", pf.address, target.num_vfs, spec.wait_timeout))
    if target.num_vfs:
        calls.append(shell.capture("netdev", "vela_pf_netdev", pf.address, spec.wait_timeout))
    addresses = {vf.index: vf.address for vf in pf.virtfns}
    for index, wanted in sorted(target.vfs.items()):
        calls += [shell.call("vela_vf_set", shell.Var("netdev"), index, *arg)
                  for arg in settings_args(wanted, FRESH)]
    for index, wanted in sorted(target.vfs.items()):
        address = addresses.get(index) or vf_address(pf, index)
        if wanted.mtu and address:
            calls.append(shell.call("vela_mtu", address, wanted.mtu))
        if wanted.driver and address:
            calls.append(shell.call("vela_bind", address, wanted.driver))
            if wanted.driver == "vfio-pci":
                calls.append(shell.call("vela_wait_vfio", address, spec.wait_timeout))
    calls += [shell.call("vela_cfg_write", r.address, r.offset, r.value, r.mask)
              for _, r in sorted(target.registers.items())]
    return shell.boot_script(HEADER, calls)


def vf_address(pf: PciDevice, index: int) -> str | None:
    """Where VF `index` appears: the PF's routing ID plus First VF Offset plus stride * index."""
    sriov = pf.caps.sriov if pf.caps else None
    if sriov is None:
        return None
    domain, bus, rest = pf.address.split(":")
    device, function = rest.split(".")
    rid = (int(bus, 16) << 8 | int(device, 16) << 3 | int(function)) + sriov.vf_offset \
        + sriov.vf_stride * index
    return f"{domain}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"


def autoprobe_path(pf: PciDevice) -> str:
    return f"/sys/bus/pci/devices/{pf.address}/sriov_drivers_autoprobe"


def settings_args(wanted: VfTarget, state: VfState) -> list[tuple[str, ...]]:
    """`ip link set ... vf N` arguments for each setting that differs from `state`."""
    args: list[tuple[str, ...]] = []
    if wanted.mac and wanted.mac != state.mac:
        args.append(("mac", wanted.mac))
    vlan, qos = wanted.vlan or 0, wanted.qos or 0
    if wanted.vlan is not None and (vlan, qos) != (state.vlan, state.qos):
        args.append(("vlan", str(vlan), "qos", str(qos)) if vlan else ("vlan", "0"))
    for name, flag in (("spoofchk", wanted.spoofchk), ("trust", wanted.trust)):
        if flag is not None and flag != getattr(state, name):
            args.append((name, "on" if flag else "off"))
    if wanted.link_state and wanted.link_state != state.link_state:
        args.append(("state", wanted.link_state))
    return args
