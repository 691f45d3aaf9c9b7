"""A guest's layout read back from its libvirt domain XML (GpuVm's `domainXml` output, or
`virsh dumpxml`), so a deployed guest can be drawn beside its host. Pure.

The XML says which controller each device plugs into (`<address bus=...>` names a controller's
`index`), each expander bus's guest NUMA cell and busNr, and each cell's vCPUs, memory and host
node; the host's facts say what each passed-through function is and which host switch it sits
under. A guest switch mirrors the host switch its devices share.
"""

from __future__ import annotations

from lxml import etree

from providers.common.libvirt import source_address
from providers.facts.models import HostFacts
from providers.gpu_vm.placement import (
    GuestCell,
    GuestComplex,
    GuestDevice,
    GuestSwitch,
    Layout,
    number_buses,
    nvswitches,
)
from providers.gpu_vm.target import cpu_list

from .model import GuestLayout

UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
             "m": 1024, "mib": 1024, "mb": 1000 ** 2 / 1024, "g": 1024 ** 2, "gib": 1024 ** 2,
             "gb": 1000 ** 3 / 1024}


class DomainReadError(ValueError):
    pass


def guest_layout(xml: str, facts: HostFacts) -> GuestLayout:
    try:
        root = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError as exc:
        raise DomainReadError(f"the domain XML does not parse: {exc}") from None
    if root.tag != "domain":
        raise DomainReadError(f"not a libvirt domain (the root element is <{root.tag}>)")
    name = root.findtext("name") or "guest"
    controllers = {int(c.get("index")): c for c in root.iterfind("devices/controller[@type='pci']")}
    plugged: dict[int, list[tuple[int, object]]] = {}  # controller index -> (slot, element)
    for index, element in controllers.items():
        bus, slot = _bus_slot(element)
        if bus is not None and index:
            plugged.setdefault(bus, []).append((slot, element))
    devices = _devices(root, facts)
    for bus, slot, device in devices:
        plugged.setdefault(bus, []).append((slot, device))
    complexes = []
    expanders = sorted((index, c) for index, c in controllers.items()
                       if c.get("model") == "pcie-expander-bus")
    for index, element in expanders:
        complexes.append(_complex(index, element, plugged, facts))
    predicted = [complex_.bus_nr for complex_ in complexes]
    number_buses(complexes)
    if predicted != [complex_.bus_nr for complex_ in complexes]:
        # Not numbered as vela numbers its guests: a predicted address would be wrong.
        for complex_, bus_nr in zip(complexes, predicted, strict=True):
            complex_.bus_nr = bus_nr
            for port in complex_.ports:
                for device in port.devices:
                    device.guest_address = ""
    listed = [device for _, _, device in devices]
    placed = [device for complex_ in complexes for port in complex_.ports
              for device in port.devices]
    emulator = root.find("cputune/emulatorpin")
    memory = root.find("memory")
    return GuestLayout(name=name, layout=Layout(
        cells=_cells(root),
        emulator_cpus=cpu_list(emulator.get("cpuset")) if emulator is not None else [],
        complexes=complexes, devices=placed + [d for d in listed if d not in placed],
        memory_kib=_kib(memory.text, memory.get("unit")) if memory is not None else 0,
        phys_bits=_maxphysaddr(root), nvlink=_nvlink(facts, listed)))


def _bus_slot(element) -> tuple[int | None, int]:
    address = element.find("address[@type='pci']")
    if address is None:
        return None, 0
    return int(address.get("bus", "0"), 16), int(address.get("slot", "0"), 16)


def _devices(root, facts: HostFacts) -> list[tuple[int, int, GuestDevice]]:
    """(guest bus index, slot, device) for every passed-through PCI function."""
    found = []
    for element in root.iterfind("devices/*"):
        source = element.find("source/address")
        host = source_address(source) if source is not None else None
        bus, slot = _bus_slot(element)
        if host is None or bus is None:
            continue
        function = facts.pci.get(host)
        kind = "vf" if function is not None and function.is_virtual_function else \
            "nvswitch" if host in {d.address for d in nvswitches(facts)} else "gpu"
        mac = element.find("mac")
        found.append((bus, slot, GuestDevice(
            host_address=host, kind=kind, host_node=function.numa_node if function else None,
            host_switch=facts.upstream_switch(host) if function else None,
            pci_class=function.class_code if function else 0,
            mac=mac.get("address") if mac is not None else None,
            bar_bytes=sum(size for size in function.bars if size) if function else 0)))
    return found


def _below(plugged, index: int) -> list:
    return [item for _, item in sorted(plugged.get(index, []), key=lambda pair: pair[0])]


def _complex(index: int, element, plugged, facts: HostFacts) -> GuestComplex:
    target = element.find("target")
    bus_nr = int(target.get("busNr", "0")) if target is not None else 0
    cell = int(target.findtext("node", "0")) if target is not None else 0
    ports = []
    for root_port in _below(plugged, index):
        if isinstance(root_port, GuestDevice):
            ports.append(GuestSwitch(switch=False, host_upstream=None, devices=[root_port]))
            continue
        for item in _below(plugged, int(root_port.get("index"))):
            if isinstance(item, GuestDevice):
                ports.append(GuestSwitch(switch=False, host_upstream=None, devices=[item]))
            else:
                ports.append(_switch(item, plugged))
    hosts = [facts.pci[d.host_address].root_complex for port in ports for d in port.devices
             if d.host_address in facts.pci]
    return GuestComplex(host_root_complex=next((rc for rc in hosts if rc), "?"), cell=cell,
                        bus_nr=bus_nr, ports=ports)


def _switch(upstream, plugged) -> GuestSwitch:
    devices = [item for downstream in _below(plugged, int(upstream.get("index")))
               if not isinstance(downstream, GuestDevice)
               for item in _below(plugged, int(downstream.get("index")))
               if isinstance(item, GuestDevice)]
    hosts = {device.host_switch for device in devices}
    host_upstream = hosts.pop() if len(hosts) == 1 else None
    for vf in (device for device in devices if device.kind == "vf"):
        # GPUDirect as placement has it: the VF shares the host switch of a GPU beside it.
        vf.gpudirect = vf.host_switch is not None and any(
            gpu.kind == "gpu" and gpu.host_switch == vf.host_switch for gpu in devices)
    return GuestSwitch(switch=True, host_upstream=host_upstream, devices=devices)


def _kib(value: str | None, unit: str | None) -> int:
    """A libvirt memory size in KiB (its default unit), from any unit formatdomain allows."""
    if not (value or "").strip():
        return 0
    return int(int(value) * UNITS_KIB.get((unit or "KiB").lower(), 1))


def _maxphysaddr(root) -> int:
    element = root.find("cpu/maxphysaddr")
    if element is None:
        return 0
    return int(element.get("bits") or element.get("limit") or 0)


def _cells(root) -> list[GuestCell]:
    pins = {int(pin.get("vcpu")): cpu_list(pin.get("cpuset"))
            for pin in root.iterfind("cputune/vcpupin")}
    nodes = {int(memnode.get("cellid")): memnode.get("nodeset")
             for memnode in root.iterfind("numatune/memnode")}
    cells = []
    for cell in root.iterfind("cpu/numa/cell"):
        id_ = int(cell.get("id"))
        vcpus = cpu_list(cell.get("cpus"))
        nodeset = cpu_list(nodes[id_]) if id_ in nodes else []
        # -1: no single host node (the picture says so rather than guess one).
        cells.append(GuestCell(id=id_, host_node=nodeset[0] if len(nodeset) == 1 else -1,
                               vcpus=vcpus,
                               host_cpus=[cpu for vcpu in vcpus for cpu in pins.get(vcpu, [])],
                               memory_kib=_kib(cell.get("memory"), cell.get("unit"))))
    return cells


def _nvlink(facts: HostFacts, devices: list[GuestDevice]) -> bool | None:
    """As placement says it: with NVSwitches on the host, NVLink only with every one of them."""
    host = {device.address for device in nvswitches(facts)}
    if not host:
        return None
    return host <= {device.host_address for device in devices}
