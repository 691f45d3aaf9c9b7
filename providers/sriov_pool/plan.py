"""SriovPool's changes: from its target and what the host has now to an ordered list. Pure.

The VF count changes first, on its own: VFs are destroyed and re-created by it, so their
settings are planned in the next round, from what the host shows after the change. A count
change is refused while any current VF (or the pool's network) is used by a libvirt domain,
defined or running: nothing is changed and the error lists the domains.
"""

from __future__ import annotations

from lxml import etree

from ..common import shell
from ..common.plan import Change, Plan, driver_change, file_changes, register_changes, unit_changes
from ..errors import SriovPoolError
from ..facts.models import HostFacts, PciDevice
from .bootunit import autoprobe_path, settings_args
from .hook import reload_call
from .observe import PoolObservations, VfState, domains_using, paths, unit_name
from .spec import SriovPoolArgs
from .target import PoolTarget


def plan(spec: SriovPoolArgs, target: PoolTarget, facts: HostFacts,
         observed: PoolObservations, pf: PciDevice, *, refuse: bool = True) -> Plan:
    """The changes to make, in order. With `refuse`, a count change while VFs are in use raises
    `SriovPoolError` (read passes False: it only reports)."""
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
        changes += register_changes(target.registers, facts)
    changes += _network(target, observed)
    changes += _files(target, observed, spec)
    return Plan(changes=changes)


def vf_users(observed: PoolObservations, pf: PciDevice, target: PoolTarget) -> dict:
    """Domain name -> the PF's VFs it holds (its definition names them or the pool's network),
    where the VF count must change: those guests stand in the way. Pure."""
    if target.num_vfs == (pf.sriov_numvfs or 0):
        return {}
    addresses = {vf.address for vf in pf.virtfns}
    network = target.network.name if target.network else None
    return domains_using(observed.domains, addresses, network)


def _refuse_if_in_use(facts: HostFacts, observed: PoolObservations, pf: PciDevice,
                      target: PoolTarget) -> None:
    users = vf_users(observed, pf, target)
    if users:
        listing = "; ".join(f"{name} ({', '.join(held)})" for name, held in sorted(users.items()))
        raise SriovPoolError(f"refusing to change the VF count of {pf.address}: libvirt domains "
                             f"use its VFs: {listing}. Shut down and undefine them (or remove "
                             f"the VFs from them) first. Nothing was changed.")


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
                raise SriovPoolError(f"{pf.address} has no network interface to set VF "
                                     f"{index} through (is its driver loaded?)")
            changes.append(Change(kind="vf", subject=f"{pf.address} vf {index}",
                                  detail=" ".join(" ".join(arg) for arg in args),
                                  calls=[shell.call("vela_vf_set", netdev, index, *arg)
                                         for arg in args]))
        address = addresses.get(index)
        device = facts.pci.get(address) if address else None
        if device is None:
            continue
        driver = driver_change(device, wanted.driver, vfio_wait=timeout)
        if driver:
            changes.append(driver)
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
    try:
        root = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError:
        return ""
    forward = root.find("forward")
    pf = forward.find("pf") if forward is not None else None
    return "|".join([root.findtext("name") or "", forward.get("mode", "") if forward is not None
                     else "", pf.get("dev", "") if pf is not None else ""])


def _files(target: PoolTarget, observed: PoolObservations, spec: SriovPoolArgs) -> list[Change]:
    """The boot unit and script, and the libvirt hook (executable: libvirt runs only those,
    src/util/virhook.c virFileIsExecutable). libvirt looks for hooks when its daemon starts or
    reloads (virHookInitialize), so a hook just created comes with a reload of the daemon."""
    where = paths(spec)
    changes = file_changes(target.files, observed.files, [where["script"], where["hook"]])
    for change in changes:
        if change.subject == where["hook"] and change.detail == "create":
            change.calls.append(reload_call())
    return changes + unit_changes(unit_name(spec), target.unit_enabled,
                                  where["link"] in observed.links)
