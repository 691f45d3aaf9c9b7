"""SriovPool's desired state and the state it found (to restore on delete). Pure.

`find_pf` resolves the port the stack names (a PCI address or an interface name) to its PCI
function. `desired_target` turns the inputs and the facts into a `PoolTarget`: the VF count,
each VF's settings and driver, the registers, the libvirt network, the boot unit, and the
libvirt hook that writes the VFs' ATS again after vfio-pci reset them.
`original_target` captures the current value of the same items; delete applies it through the
same planner as create.
"""

from __future__ import annotations

from lxml import etree
from pydantic import BaseModel, Field

from ..common.registers import Register, ats_enable, current_register
from ..errors import SriovPoolError
from ..facts.models import HostFacts, PciDevice
from .bootunit import boot_script, unit_text
from .hook import hook_script
from .observe import PoolObservations, VfState, paths
from .spec import SriovPoolArgs


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


# -- the PF ----------------------------------------------------------------------------------

def find_pf(spec: SriovPoolArgs, facts: HostFacts, observed: PoolObservations) -> PciDevice:
    address = observed.pf or (spec.pf if spec.pf in facts.pci else None)
    if address is None or address not in facts.pci:
        ports = sorted(f"{device.address} ({' '.join(device.net)})"
                       for device in facts.pci.values()
                       if device.net and not device.is_virtual_function)
        raise SriovPoolError(f"no NIC port {spec.pf!r} on this host; its ports: "
                             f"{', '.join(ports) or 'none'}")
    return facts.pci[address]


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
        # ATS only: a VF's Max Read Request is RsvdP (the PF's, set by HostTuning, applies).
        register = ats_enable(device, spec.mode == "vm") if spec.ats else None
        if register is not None:
            target.registers[register.key] = register
    if spec.network is not None:
        netdev = observed.netdev or spec.pf
        target.network = NetworkTarget(name=spec.network.name, autostart=spec.network.autostart,
                                       xml=network_xml(spec.network.name, netdev))
    where = paths(spec)
    # The hook's path is always there (None: absent), so a hook left by an earlier target is
    # removed, and the originals know the path from the first run.
    target.files = {where["unit"]: unit_text(spec, where["script"]),
                    where["script"]: boot_script(spec, target, pf),
                    where["hook"]: hook_script(spec, target)}
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
    """A libvirt network of the PF's VFs, handed to guests one by one (forward mode hostdev)."""
    network = etree.Element("network")
    etree.SubElement(network, "name").text = name
    forward = etree.SubElement(network, "forward", mode="hostdev", managed="yes")
    etree.SubElement(forward, "pf", dev=netdev)
    return etree.tostring(network, pretty_print=True).decode()
