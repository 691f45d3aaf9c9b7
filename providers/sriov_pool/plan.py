"""SriovPool's desired state, the state it found, and the changes between them. Pure.

The VF count changes first, on its own: VFs are destroyed and re-created by it, so their
settings are planned in the next round, from what the host shows after the change. A count
change is refused while any current VF (or the pool's network) is used by a libvirt domain,
defined or running: nothing is changed and the error lists the domains.
"""

from __future__ import annotations

import shlex

from pydantic import BaseModel, Field

from ..common import shell
from ..common.registers import Register, ats_enable, current_register, max_read_request
from ..errors import VelaError
from ..facts.models import HostFacts, PciDevice
from .observe import PoolObservations, VfState, domains_using, paths, unit_name
from .spec import SriovPoolArgs, too_many_vfs

# What a freshly created VF has: settings equal to these need no command at boot.
FRESH = VfState(index=-1, mac=None, vlan=0, qos=0, spoofchk=True, trust=False, link_state="auto")
HEADER = "# Written by vela (SriovPool); removed when the resource is deleted.\n"


class PoolError(VelaError):
    """The pool cannot be set up as asked; the message says why and what to do."""


class VfTarget(BaseModel):
    mac: str | None = None
    vlan: int | None = None
    qos: int | None = None
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: str | None = None
    mtu: int | None = None
    driver: str | None = None  # override ("vfio-pci"); None: the VF driver of the NIC


class NetworkTarget(BaseModel):
    name: str
    xml: str | None  # None: absent
    autostart: bool = True


class PoolTarget(BaseModel):
    pf: str
    num_vfs: int
    # sriov_drivers_autoprobe: "0" for vfio-pci pools, so new VFs never flap through the NIC's
    # VF driver (and race our rebinding) on their way to vfio-pci.
    autoprobe: str | None = None
    pf_mtu: int | None = None
    # The PF is brought up: its VFs pass no traffic through a PF that is down, and libvirt
    # refuses to set a VF's MAC for a guest ("the PF is not online").
    pf_up: bool | None = None
    vfs: dict[int, VfTarget] = Field(default_factory=dict)
    registers: dict[str, Register] = Field(default_factory=dict)
    files: dict[str, str | None] = Field(default_factory=dict)
    unit_enabled: bool | None = None
    network: NetworkTarget | None = None


class Change(BaseModel):
    kind: str
    subject: str
    detail: str
    calls: list[str] = Field(default_factory=list, exclude=True)

    def summary(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"


# -- the PF ------------------------------------------------------------------------------------

def find_pf(spec: SriovPoolArgs, facts: HostFacts, observed: PoolObservations) -> PciDevice:
    address = observed.pf or (spec.pf if spec.pf in facts.pci else None)
    if address is None or address not in facts.pci:
        ports = sorted(f"{device.address} ({' '.join(device.net)})"
                       for device in facts.pci.values()
                       if device.net and not device.is_virtual_function)
        raise PoolError(f"no NIC port {spec.pf!r} on this host; its ports: "
                        f"{', '.join(ports) or 'none'}")
    return facts.pci[address]


def preflight(spec: SriovPoolArgs, pf: PciDevice) -> list[str]:
    if pf.sriov_totalvfs is None:
        return [f"{pf.address} ({pf.vendor_device}) has no SR-IOV capability: turn on "
                f"\"SR-IOV Support\" in the BIOS setup (on ConnectX also SRIOV_EN in the NIC "
                f"firmware, e.g. through HostTuning), then reboot"]
    if spec.num_vfs > pf.sriov_totalvfs:
        return [too_many_vfs(spec.pf, spec.num_vfs, pf.sriov_totalvfs)]
    return []


# -- desired and original state -------------------------------------------------------------

def desired_target(spec: SriovPoolArgs, facts: HostFacts, observed: PoolObservations,
                   pf: PciDevice) -> PoolTarget:
    driver = "vfio-pci" if spec.driver == "vfio-pci" else None
    target = PoolTarget(pf=pf.address, num_vfs=spec.num_vfs, autoprobe="0" if driver else "1",
                        pf_mtu=spec.pf_mtu, pf_up=True)
    for index in range(spec.num_vfs):
        settings = spec.settings(index)
        target.vfs[index] = VfTarget(**settings.model_dump(), driver=driver)
    for vf in pf.virtfns:
        if vf.index >= spec.num_vfs or vf.address not in facts.pci:
            continue
        device = facts.pci[vf.address]
        registers = [ats_enable(device, spec.mode == "vm") if spec.ats else None,
                     max_read_request(device, spec.max_read_request)
                     if spec.max_read_request else None]
        target.registers.update({reg.key: reg for reg in registers if reg is not None})
    if spec.network is not None:
        netdev = observed.netdev or spec.pf
        target.network = NetworkTarget(name=spec.network.name, autostart=spec.network.autostart,
                                       xml=network_xml(spec.network.name, netdev))
    where = paths(spec)
    target.files = {where["unit"]: unit_text(spec, where["script"]),
                    where["script"]: boot_script(spec, target, facts, pf)}
    target.unit_enabled = True
    return target


def original_target(spec: SriovPoolArgs, desired: PoolTarget, facts: HostFacts,
                    observed: PoolObservations, pf: PciDevice) -> PoolTarget:
    original = PoolTarget(pf=pf.address, num_vfs=pf.sriov_numvfs or 0,
                          autoprobe=observed.autoprobe,
                          pf_mtu=observed.mtus.get(observed.netdev or "")
                          if desired.pf_mtu else None,
                          pf_up=observed.pf_up)
    for index in range(original.num_vfs):
        state = observed.vfs.get(index, VfState(index=index))
        vf = next((v for v in pf.virtfns if v.index == index), None)
        device = facts.pci.get(vf.address) if vf else None
        original.vfs[index] = VfTarget(mac=state.mac, vlan=state.vlan, qos=state.qos,
                                       spoofchk=state.spoofchk, trust=state.trust,
                                       link_state=state.link_state,
                                       mtu=observed.mtus.get(device.net[0])
                                       if device and device.net else None,
                                       driver=device.driver_override if device else None)
    for key, register in desired.registers.items():
        current = current_register(facts, register.address, register.offset)
        if current is not None:
            original.registers[key] = register.model_copy(
                update={"value": current & register.mask})
    original.files = {path: observed.files.get(path) for path in desired.files}
    original.unit_enabled = paths(spec)["link"] in observed.links
    if desired.network is not None:
        current = observed.network
        original.network = NetworkTarget(name=desired.network.name,
                                         xml=current.xml if current else None,
                                         autostart=current.autostart if current else False)
    return original


def network_xml(name: str, netdev: str) -> str:
    return (f"<network>\n  <name>{name}</name>\n  <forward mode='hostdev' managed='yes'>\n"
            f"    <pf dev='{netdev}'/>\n  </forward>\n</network>\n")


# -- the plan --------------------------------------------------------------------------------

def plan(spec: SriovPoolArgs, target: PoolTarget, facts: HostFacts,
         observed: PoolObservations, pf: PciDevice, *, refuse: bool = True) -> list[Change]:
    """The changes to make, in order. With `refuse`, a count change while VFs are in use raises
    `PoolError` (read passes False: it only reports)."""
    changes: list[Change] = []
    if target.autoprobe is not None and target.autoprobe != observed.autoprobe:
        changes.append(Change(kind="autoprobe", subject=pf.address,
                              detail=f"{observed.autoprobe} -> {target.autoprobe}",
                              calls=[shell.call("vela_sysfs_write", autoprobe_path(pf),
                                                target.autoprobe)]))
    if target.pf_mtu and observed.netdev and observed.mtus.get(observed.netdev) != target.pf_mtu:
        changes.append(Change(kind="mtu", subject=observed.netdev,
                              detail=f"{observed.mtus.get(observed.netdev)} -> {target.pf_mtu}",
                              calls=[shell.call("vela_mtu", pf.address, target.pf_mtu)]))
    if target.pf_up is not None and observed.pf_up is not None \
            and target.pf_up != observed.pf_up and observed.netdev:
        state = "up" if target.pf_up else "down"
        changes.append(Change(kind="link", subject=observed.netdev, detail=state,
                              calls=[shell.call("vela_link", pf.address, state)]))
    current_count = pf.sriov_numvfs or 0
    if target.num_vfs != current_count:
        if refuse:
            _refuse_if_in_use(facts, observed, pf, target)
        changes.append(Change(kind="vf-count", subject=pf.address,
                              detail=f"{current_count} -> {target.num_vfs}",
                              calls=[shell.call("vela_sriov_numvfs", pf.address,
                                                target.num_vfs, spec.wait_timeout)]))
    else:
        changes += _vf_settings(target, facts, observed, pf, spec.wait_timeout)
        changes += _registers(target, facts)
    changes += _network(target, observed)
    changes += _files(target, observed, spec)
    return changes


def _refuse_if_in_use(facts: HostFacts, observed: PoolObservations, pf: PciDevice,
                      target: PoolTarget) -> None:
    addresses = {vf.address for vf in pf.virtfns}
    network = target.network.name if target.network else None
    users = domains_using(observed.domains, addresses, network)
    if users:
        listing = "; ".join(f"{name} ({', '.join(held)})" for name, held in sorted(users.items()))
        raise PoolError(f"refusing to change the VF count of {pf.address}: libvirt domains use "
                        f"its VFs: {listing}. Shut down and undefine them (or remove the VFs "
                        f"from them) first. Nothing was changed.")


def _vf_settings(target: PoolTarget, facts: HostFacts, observed: PoolObservations,
                 pf: PciDevice, timeout: int) -> list[Change]:
    changes = []
    netdev = observed.netdev
    addresses = {vf.index: vf.address for vf in pf.virtfns}
    for index, wanted in sorted(target.vfs.items()):
        state = observed.vfs.get(index, VfState(index=index))
        args = settings_args(wanted, state)
        if args:
            if not netdev:
                raise PoolError(f"{pf.address} has no network interface to set VF {index} "
                                f"through (is its driver loaded?)")
            changes.append(Change(kind="vf", subject=f"{pf.address} vf {index}",
                                  detail=" ".join(" ".join(arg) for arg in args),
                                  calls=[shell.call("vela_vf_set", netdev, index, *arg)
                                         for arg in args]))
        address = addresses.get(index)
        device = facts.pci.get(address) if address else None
        if device is None:
            continue
        if wanted.driver and (device.driver != wanted.driver
                              or device.driver_override != wanted.driver):
            calls = [shell.call("vela_bind", address, wanted.driver)]
            if wanted.driver == "vfio-pci":
                calls.append(shell.call("vela_wait_vfio", address, timeout))
            changes.append(Change(kind="driver", subject=address,
                                  detail=f"{device.driver or 'no driver'} -> {wanted.driver}",
                                  calls=calls))
        elif not wanted.driver and device.driver_override:
            changes.append(Change(kind="driver", subject=address,
                                  detail=f"{device.driver} -> the NIC's VF driver",
                                  calls=[shell.call("vela_bind", address, "")]))
        elif wanted.mtu and device.net and observed.mtus.get(device.net[0]) != wanted.mtu:
            changes.append(Change(kind="mtu", subject=device.net[0],
                                  detail=f"{observed.mtus.get(device.net[0])} -> {wanted.mtu}",
                                  calls=[shell.call("vela_mtu", address, wanted.mtu)]))
        elif wanted.driver == "vfio-pci" and device.iommu_group is not None \
                and observed.vfio_groups and device.iommu_group not in observed.vfio_groups:
            changes.append(Change(kind="vfio", subject=address,
                                  detail=f"/dev/vfio/{device.iommu_group} missing",
                                  calls=[shell.call("vela_wait_vfio", address, timeout)]))
    return changes


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


def _registers(target: PoolTarget, facts: HostFacts) -> list[Change]:
    changes = []
    for _, register in sorted(target.registers.items()):
        current = current_register(facts, register.address, register.offset)
        if current is None or current & register.mask == register.value & register.mask:
            continue
        new = (current & ~register.mask) | (register.value & register.mask)
        changes.append(Change(kind="register", subject=register.address,
                              detail=f"{register.what} {current:#06x} -> {new:#06x}",
                              calls=[shell.call("vela_cfg_write", register.address,
                                                register.offset, register.value,
                                                register.mask)]))
    return changes


def _network(target: PoolTarget, observed: PoolObservations) -> list[Change]:
    wanted = target.network
    if wanted is None:
        return []
    current = observed.network
    name = wanted.name
    if wanted.xml is None:
        if current is None:
            return []
        calls = ([shell.call("vela_virsh", "net-destroy", name)] if current.active else []) + \
            [shell.call("vela_virsh", "net-undefine", name)]
        return [Change(kind="network", subject=name, detail="remove", calls=calls)]
    calls = []
    if current is None or _normal(current.xml) != _normal(wanted.xml):
        path = f"/run/vela-network-{name}.xml"
        calls += [shell.write_file(path, wanted.xml, 0o600),
                  shell.call("vela_virsh", "net-define", path),
                  shell.call("vela_remove_file", path)]
    if current is None or not current.active:
        calls.append(shell.call("vela_virsh", "net-start", name))
    if current is None or current.autostart != wanted.autostart:
        calls.append(shell.call("vela_virsh", "net-autostart", name,
                                *([] if wanted.autostart else ["--disable"])))
    return [Change(kind="network", subject=name, detail="define and start", calls=calls)] \
        if calls else []


def _normal(xml: str) -> str:
    """The parts of a network definition we own: name, forward mode and PF."""
    from lxml import etree

    try:
        root = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError:
        return ""
    forward = root.find("forward")
    pf = forward.find("pf") if forward is not None else None
    return "|".join([root.findtext("name") or "", forward.get("mode", "") if forward is not None
                     else "", pf.get("dev", "") if pf is not None else ""])


def _files(target: PoolTarget, observed: PoolObservations, spec: SriovPoolArgs) -> list[Change]:
    changes = []
    for path, content in target.files.items():
        if observed.files.get(path) == content:
            continue
        if content is None:
            changes.append(Change(kind="file", subject=path, detail="remove",
                                  calls=[shell.call("vela_remove_file", path)]))
        else:
            mode = 0o755 if "/sbin/" in path else 0o644
            changes.append(Change(kind="file", subject=path, detail="write",
                                  calls=[shell.write_file(path, content, mode)]))
    link = paths(spec)["link"]
    if target.unit_enabled is not None and target.unit_enabled != (link in observed.links):
        verb = "enable" if target.unit_enabled else "disable"
        changes.append(Change(kind="unit", subject=unit_name(spec), detail=verb,
                              calls=[shell.call("vela_unit", verb, unit_name(spec))]))
    return changes


# -- what a reboot needs -------------------------------------------------------------------------

def unit_text(spec: SriovPoolArgs, script: str) -> str:
    return (f"{HEADER}[Unit]\nDescription=vela: the VFs of {spec.pf}, re-created at boot\n"
            "After=systemd-udev-settle.service systemd-modules-load.service\n"
            "Wants=systemd-udev-settle.service\n"
            "Before=libvirtd.service virtqemud.service vela-host-tuning.service\n\n"
            f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={script}\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


def boot_script(spec: SriovPoolArgs, target: PoolTarget, facts: HostFacts,
                pf: PciDevice) -> str:
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
        calls.append(f"netdev=$(vela_pf_netdev {pf.address} {spec.wait_timeout})")
    addresses = {vf.index: vf.address for vf in pf.virtfns}
    for index, wanted in sorted(target.vfs.items()):
        calls += [f'vela_vf_set "$netdev" {shlex.join([str(index), *arg])}'
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
    return "#!/bin/sh\n" + HEADER + shell.script(calls)


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
