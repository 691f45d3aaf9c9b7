"""Where a guest's pieces go: which GPUs, which VF pairs with which GPU, which host CPUs and NUMA
nodes, and the guest PCIe tree that mirrors the host's. Policy only: pure, no XML.

Rules:
- GPUs by count come from as few NUMA nodes as possible, switch by switch, preferring switches
  that also hold a VF given to the guest (GPUDirect wants the NIC next to the GPU).
- Each VF pairs with a GPU under the same host PCIe switch, else on the same NUMA node.
- One guest NUMA cell per host node used; vCPUs pinned 1:1 to that node's CPUs after the
  `reservedCpus` left to the emulator and I/O threads; memory split across the cells.
- Guest PCIe: one expander bus (pxb-pcie) per host root complex used, on its guest cell; a
  root port per host root port; a switch per host switch, with a downstream port per device;
  a VF paired with a GPU sits under the GPU's virtual switch.
- Guest bus numbers are predicted (depth first from each expander's busNr, as the guest's
  firmware and Linux number them), so the NCCL topology file can name guest addresses.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from ..common.selectors import matches
from ..facts.models import HostFacts, PciDevice
from .spec import GpuVmArgs

GIB_KIB = 1024 * 1024
FIRST_BUS = 0x80  # expander buses sit above everything libvirt numbers on pcie.0
BUS_STRIDE = 0x10


class PlacementError(ValueError):
    pass


class GuestDevice(BaseModel):
    host_address: str
    kind: str  # "gpu", "vf" or "nvswitch"
    host_node: int | None
    host_switch: str | None
    pci_class: int = 0  # 24 bits, as the host (and so the guest) reads it
    mac: str | None = None
    paired_with: str | None = None  # the GPU a VF pairs with (host address)
    # A VF only: its NIC shares a host PCIe switch with the GPU it pairs with (GPUDirect RDMA
    # goes peer to peer through that switch); False: through the CPU's root complex.
    gpudirect: bool = False
    bar_bytes: int = 0
    guest_address: str = ""  # predicted, filled by `number_buses`


class GuestSwitch(BaseModel):
    """A virtual PCIe switch (or, with `switch=False`, a device straight on its root port)."""

    switch: bool
    host_upstream: str | None
    devices: list[GuestDevice] = Field(default_factory=list)


class GuestComplex(BaseModel):
    host_root_complex: str
    cell: int
    bus_nr: int = 0
    ports: list[GuestSwitch] = Field(default_factory=list)  # one root port each


class GuestCell(BaseModel):
    id: int
    host_node: int
    vcpus: list[int]
    host_cpus: list[int]
    memory_kib: int


class Layout(BaseModel):
    cells: list[GuestCell]
    emulator_cpus: list[int]
    complexes: list[GuestComplex]
    devices: list[GuestDevice]
    memory_kib: int
    phys_bits: int
    # NVLink inside the guest: True where the host's NVSwitches came along with all its GPUs,
    # False where the host has NVSwitches but the guest took only some GPUs, None without them.
    nvlink: bool | None = None

    @property
    def vcpus(self) -> int:
        return sum(len(cell.vcpus) for cell in self.cells)


def candidate_gpus(spec: GpuVmArgs, facts: HostFacts) -> list[PciDevice]:
    return [device for _, device in sorted(facts.pci.items())
            if not device.is_bridge and any(matches(sel, device) for sel in spec.gpu_selector)]


def place(spec: GpuVmArgs, facts: HostFacts, taken: dict[str, str],
          hugepage_kib: int = GIB_KIB) -> Layout:
    """`taken`: host PCI address -> the domain that already holds it."""
    vfs = _vfs(spec, facts, taken)
    gpus = _gpus(spec, facts, taken, vfs)
    _pair(facts, gpus, vfs)
    nodes = sorted({device.host_node for device in gpus + vfs if device.host_node is not None}) \
        or [facts.numa_nodes[0].id if facts.numa_nodes else 0]
    cells, emulator = _cells(spec, facts, nodes, hugepage_kib)
    complexes = _tree(facts, nodes, gpus, vfs)
    number_buses(complexes)
    memory = sum(cell.memory_kib for cell in cells)
    devices = gpus + vfs
    return Layout(cells=cells, emulator_cpus=emulator, complexes=complexes, devices=devices,
                  memory_kib=memory,
                  phys_bits=physical_bits(memory, [d.bar_bytes for d in devices]))


# -- devices ---------------------------------------------------------------------------------------

def _guest_device(facts: HostFacts, address: str, kind: str, mac: str | None = None):
    device = facts.pci[address]
    return GuestDevice(host_address=address, kind=kind, host_node=device.numa_node,
                       host_switch=facts.upstream_switch(address), mac=mac,
                       pci_class=device.class_code,
                       bar_bytes=sum(size for size in device.bars if size))


def _vfs(spec: GpuVmArgs, facts: HostFacts, taken: dict[str, str]) -> list[GuestDevice]:
    chosen = []
    for vf in spec.vfs:
        if vf.address not in facts.pci:
            raise PlacementError(f"VF {vf.address} does not exist on this host (did the "
                                 f"SriovPool create it?)")
        if vf.address in taken:
            raise PlacementError(f"VF {vf.address} is already assigned to domain "
                                 f"{taken[vf.address]!r}")
        chosen.append(_guest_device(facts, vf.address, "vf", vf.mac))
    return chosen


def _gpus(spec: GpuVmArgs, facts: HostFacts, taken: dict[str, str],
          vfs: list[GuestDevice]) -> list[GuestDevice]:
    candidates = candidate_gpus(spec, facts)
    if isinstance(spec.gpus, list):
        for address in spec.gpus:
            if address not in facts.pci:
                raise PlacementError(f"no GPU {address} on this host")
            if address in taken:
                raise PlacementError(f"GPU {address} is already assigned to domain "
                                     f"{taken[address]!r}")
        return [_guest_device(facts, address, "gpu") for address in spec.gpus]
    free = [gpu for gpu in candidates if gpu.address not in taken]
    if len(free) < spec.gpus:
        held = sorted({taken[gpu.address] for gpu in candidates if gpu.address in taken})
        raise PlacementError(f"{spec.gpus} GPU(s) asked for, {len(free)} free of "
                             f"{len(candidates)} (held by domains: {', '.join(held) or 'none'})")
    vf_switches = {vf.host_switch for vf in vfs if vf.host_switch}
    by_node: dict[int | None, list[PciDevice]] = {}
    for gpu in free:
        by_node.setdefault(gpu.numa_node, []).append(gpu)
    vf_nodes = {vf.host_node for vf in vfs}
    order = sorted(by_node, key=lambda node: (node not in vf_nodes, -len(by_node[node]),
                                              node if node is not None else -1))
    chosen: list[PciDevice] = []
    for node in order:
        ranked = sorted(by_node[node], key=lambda gpu: (
            facts.upstream_switch(gpu.address) not in vf_switches,
            facts.upstream_switch(gpu.address) or "", gpu.address))
        chosen += ranked[:spec.gpus - len(chosen)]
        if len(chosen) == spec.gpus:
            break
    return [_guest_device(facts, gpu.address, "gpu") for gpu in chosen]


def _pair(facts: HostFacts, gpus: list[GuestDevice], vfs: list[GuestDevice]) -> None:
    free = list(gpus)
    for rule in (lambda vf, gpu: vf.host_switch and vf.host_switch == gpu.host_switch,
                 lambda vf, gpu: vf.host_node == gpu.host_node):
        for vf in vfs:
            if vf.paired_with:
                continue
            gpu = next((gpu for gpu in free if rule(vf, gpu)), None)
            if gpu is not None:
                vf.paired_with = gpu.host_address
                free.remove(gpu)


# -- CPUs and memory -------------------------------------------------------------------------------

def _cells(spec: GpuVmArgs, facts: HostFacts, nodes: list[int],
           hugepage_kib: int) -> tuple[list[GuestCell], list[int]]:
    emulator: list[int] = []
    usable: dict[int, list[int]] = {}
    for node_id in nodes:
        node = facts.node(node_id)
        if node is None:
            raise PlacementError(f"host NUMA node {node_id} is not described by the host")
        emulator += node.cpus[:spec.reserved_cpus]
        usable[node_id] = node.cpus[spec.reserved_cpus:]
    if spec.whole_nodes:
        counts = {node: len(usable[node]) for node in nodes}
        memory = {}
        for node in nodes:
            pool = facts.node(node).pool(hugepage_kib)
            memory[node] = (pool.free if pool and spec.hugepages else 0) * hugepage_kib or \
                (facts.node(node).memory_kib or 0) // 2 // GIB_KIB * GIB_KIB
    else:
        counts = _split(spec.vcpus, nodes)
        memory = {node: gib * GIB_KIB for node, gib in _split(spec.memory_gib, nodes).items()}
    cells: list[GuestCell] = []
    next_vcpu = 0
    for index, node in enumerate(nodes):
        if counts[node] > len(usable[node]):
            raise PlacementError(f"{counts[node]} vCPUs on host node {node}, which has "
                                 f"{len(usable[node])} CPUs after {spec.reserved_cpus} reserved")
        if memory[node] <= 0:
            raise PlacementError(f"no memory for guest cell {index} (host node {node})")
        cells.append(GuestCell(id=index, host_node=node,
                               vcpus=list(range(next_vcpu, next_vcpu + counts[node])),
                               host_cpus=usable[node][:counts[node]], memory_kib=memory[node]))
        next_vcpu += counts[node]
    return cells, emulator


def _split(total: int, nodes: list[int]) -> dict[int, int]:
    if total < len(nodes):
        raise PlacementError(f"{total} cannot be split over the {len(nodes)} NUMA nodes the "
                             f"guest's devices sit on ({nodes}): give at least one per node")
    return {node: total // len(nodes) + (1 if index < total % len(nodes) else 0)
            for index, node in enumerate(nodes)}


def physical_bits(memory_kib: int, bars: list[int]) -> int:
    """Guest physical address bits for RAM above 4 GiB plus every 64-bit BAR, naturally
    aligned, with room to spare: too few bits is why large-BAR GPUs vanish in big guests."""
    top = memory_kib * 1024 + 4 * 1024 ** 3
    for size in sorted(bars, reverse=True):
        if size:
            top = math.ceil(top / size) * size + size
    return max(40, math.ceil(math.log2(top)) + 1)


# -- the guest PCIe tree ---------------------------------------------------------------------------

def _tree(facts: HostFacts, nodes: list[int], gpus: list[GuestDevice],
          vfs: list[GuestDevice]) -> list[GuestComplex]:
    cell_of = {node: index for index, node in enumerate(nodes)}
    complexes: dict[str, GuestComplex] = {}
    ports: dict[tuple[str, str], GuestSwitch] = {}
    partner = {vf.paired_with: vf for vf in vfs if vf.paired_with}
    for device in gpus + [vf for vf in vfs if not vf.paired_with]:
        host = facts.pci[device.host_address]
        complex_ = complexes.setdefault(host.root_complex or "pci0000:00", GuestComplex(
            host_root_complex=host.root_complex or "pci0000:00",
            cell=cell_of.get(device.host_node, 0)))
        root_port = host.upstream[0] if host.upstream else device.host_address
        key = (complex_.host_root_complex, device.host_switch or root_port + "/" +
               device.host_address)
        port = ports.get(key)
        if port is None:
            port = GuestSwitch(switch=device.host_switch is not None or device.host_address in
                               partner, host_upstream=device.host_switch)
            ports[key] = port
            complex_.ports.append(port)
        port.devices.append(device)
        if device.host_address in partner:
            port.devices.append(partner[device.host_address])
            port.switch = True
    return sorted(complexes.values(), key=lambda c: (c.cell, c.host_root_complex))


def number_buses(complexes: list[GuestComplex]) -> None:
    """Assign each expander its busNr and predict every device's guest address."""
    for index, complex_ in enumerate(complexes):
        complex_.bus_nr = FIRST_BUS + BUS_STRIDE * index
        bus = complex_.bus_nr
        for port in complex_.ports:
            bus += 1  # the root port's secondary bus
            if port.switch:
                bus += 1  # the upstream port's secondary bus: the downstream ports live there
                for device in port.devices:
                    bus += 1
                    device.guest_address = f"0000:{bus:02x}:00.0"
            else:
                port.devices[0].guest_address = f"0000:{bus:02x}:00.0"
        if bus >= complex_.bus_nr + BUS_STRIDE:
            raise PlacementError(f"too many devices under {complex_.host_root_complex} for one "
                                 f"guest expander bus")
