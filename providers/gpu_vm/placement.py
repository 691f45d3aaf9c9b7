"""Where a guest's pieces go: which GPUs, which VF pairs with which GPU, which host CPUs and NUMA
nodes, and the guest PCIe tree that mirrors the host's. Policy only: pure, no XML.

Rules:
- The guest's host NUMA nodes: all, `numaNodes`, or its part of the host (`hostShare`: the
  nodes split in equal consecutive groups, one per VM, so two VMs on a 2-socket host take a
  socket each). GPUs, VFs, CPUs and memory come from those nodes only.
- GPUs by count come from as few NUMA nodes as possible, switch by switch, preferring switches
  that also hold a VF given to the guest (GPUDirect wants the NIC next to the GPU).
- NVSwitch nodes: a guest with every GPU of the host takes every NVSwitch too (NVLink works
  once Fabric Manager runs in the guest); one with only some GPUs has no NVLink, refused
  unless `allowNoNvlink`.
- A VF pairs with a GPU only where both sit under the same host PCIe switch (GPUDirect RDMA
  goes peer to peer there), and then sits under that GPU's virtual switch. Any other VF gets a
  root port of its own on its NUMA node's expander: it never claims a switch it is not under.
- One guest NUMA cell per host node used; vCPUs pinned 1:1 to that node's CPUs after the
  `reservedCpus` left to the emulator and I/O threads, never on a CPU another domain is
  pinned to; memory split across the cells.
- Guest PCIe: one expander bus (pxb-pcie) per host root complex used, on its guest cell; a
  root port per host root port; a switch per host switch, with a downstream port per device.
- Guest bus numbers are predicted (depth first from each expander's busNr, as the guest's
  firmware and Linux number them), so the NCCL topology file can name guest addresses.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from ..common.selectors import matches
from ..facts.models import HostFacts, PciDevice
from .spec import GpuVmArgs

NVSWITCH_SELECTOR = "nvidia-nvswitch"

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


def nvswitches(facts: HostFacts) -> list[PciDevice]:
    """The host's NVSwitch functions (HGX/DGX baseboards: bridge class 0x0680)."""
    return [device for _, device in sorted(facts.pci.items())
            if matches(NVSWITCH_SELECTOR, device)]


def place(spec: GpuVmArgs, facts: HostFacts, taken: dict[str, str],
          hugepage_kib: int = GIB_KIB, pinned: dict[int, str] | None = None) -> Layout:
    """`taken`: host PCI address -> the domain that already holds it; `pinned`: host CPU ->
    a domain whose vCPUs or emulator are pinned there."""
    allowed = allowed_nodes(spec, facts)
    vfs = _vfs(spec, facts, taken, allowed)
    gpus = _gpus(spec, facts, taken, vfs, allowed)
    switches, nvlink = _nvswitches(spec, facts, taken, gpus)
    _pair(gpus, vfs)
    nodes = sorted({device.host_node for device in gpus + vfs if device.host_node is not None}
                   & set(allowed)) or allowed
    cells, emulator = _cells(spec, facts, nodes, hugepage_kib, pinned or {})
    complexes = _tree(facts, nodes, gpus + switches + vfs)
    number_buses(complexes)
    memory = sum(cell.memory_kib for cell in cells)
    devices = gpus + switches + vfs
    return Layout(cells=cells, emulator_cpus=emulator, complexes=complexes, devices=devices,
                  memory_kib=memory, nvlink=nvlink,
                  phys_bits=physical_bits(memory, [d.bar_bytes for d in devices]))


def allowed_nodes(spec: GpuVmArgs, facts: HostFacts) -> list[int]:
    """The host NUMA nodes this guest may use: all, `numaNodes`, or its `hostShare`."""
    every = sorted(node.id for node in facts.numa_nodes) or [0]
    if spec.numa_nodes is not None:
        missing = sorted(set(spec.numa_nodes) - set(every))
        if missing:
            raise PlacementError(f"numaNodes names node(s) {missing} the host does not have "
                                 f"(it has {every})")
        return sorted(spec.numa_nodes)
    if spec.host_share is None:
        return every
    share = spec.host_share
    if share.count > len(every):
        raise PlacementError(f"{share.count} VMs per host, one per part of its NUMA nodes, but "
                             f"the host has {len(every)} node(s) ({every}): give it at most "
                             f"{len(every)} VMs (vmsPerNode)")
    if len(every) % share.count:
        raise PlacementError(f"the host's {len(every)} NUMA nodes do not split into "
                             f"{share.count} equal parts: set vmsPerNode to a divisor of "
                             f"{len(every)}")
    size = len(every) // share.count
    return every[share.index * size:(share.index + 1) * size]


# -- devices ---------------------------------------------------------------------------------------

def _guest_device(facts: HostFacts, address: str, kind: str, mac: str | None = None):
    device = facts.pci[address]
    return GuestDevice(host_address=address, kind=kind, host_node=device.numa_node,
                       host_switch=facts.upstream_switch(address), mac=mac,
                       pci_class=device.class_code,
                       bar_bytes=sum(size for size in device.bars if size))


def _vfs(spec: GpuVmArgs, facts: HostFacts, taken: dict[str, str],
         allowed: list[int]) -> list[GuestDevice]:
    chosen = []
    for vf in spec.vfs:
        if vf.address not in facts.pci:
            raise PlacementError(f"VF {vf.address} does not exist on this host (did the "
                                 f"SriovPool create it?)")
        node = facts.pci[vf.address].numa_node
        if node is not None and node not in allowed:
            if spec.host_share is not None:
                continue  # another part of the host: its VM takes it
            raise PlacementError(f"VF {vf.address} is on NUMA node {node}, outside numaNodes "
                                 f"{allowed}")
        if vf.address in taken:
            raise PlacementError(f"VF {vf.address} is already assigned to domain "
                                 f"{taken[vf.address]!r}")
        chosen.append(_guest_device(facts, vf.address, "vf", vf.mac))
    return chosen


def _gpus(spec: GpuVmArgs, facts: HostFacts, taken: dict[str, str],
          vfs: list[GuestDevice], allowed: list[int]) -> list[GuestDevice]:
    if isinstance(spec.gpus, list):
        for address in spec.gpus:
            if address not in facts.pci:
                raise PlacementError(f"no GPU {address} on this host")
            if address in taken:
                raise PlacementError(f"GPU {address} is already assigned to domain "
                                     f"{taken[address]!r}")
            node = facts.pci[address].numa_node
            if node is not None and node not in allowed:
                raise PlacementError(f"GPU {address} is on NUMA node {node}, outside this "
                                     f"guest's nodes {allowed}")
        return [_guest_device(facts, address, "gpu") for address in spec.gpus]
    candidates = [gpu for gpu in candidate_gpus(spec, facts)
                  if gpu.numa_node is None or gpu.numa_node in allowed]
    free = [gpu for gpu in candidates if gpu.address not in taken]
    if len(free) < spec.gpus:
        held = sorted({taken[gpu.address] for gpu in candidates if gpu.address in taken})
        where = "" if allowed == sorted(n.id for n in facts.numa_nodes) else \
            f" on NUMA node(s) {allowed}"
        raise PlacementError(f"{spec.gpus} GPU(s) asked for, {len(free)} free of "
                             f"{len(candidates)}{where} (held by domains: "
                             f"{', '.join(held) or 'none'})")
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


def _nvswitches(spec: GpuVmArgs, facts: HostFacts, taken: dict[str, str],
                gpus: list[GuestDevice]) -> tuple[list[GuestDevice], bool | None]:
    """All the host's NVSwitches when the guest has all its GPUs, and whether NVLink works.

    On NVSwitch systems GPU-to-GPU NVLink traffic crosses the NVSwitches, and Fabric Manager
    (in the guest, for full passthrough) brings the fabric up only with every GPU and every
    NVSwitch of the baseboard; a guest with some of the GPUs gets no NVLink at all (NVIDIA
    Fabric Manager user guide, "Full Passthrough Virtualization Model")."""
    switches = nvswitches(facts)
    if not switches or not gpus:
        return [], None
    every = {gpu.address for gpu in candidate_gpus(spec, facts)}
    if not every <= {gpu.host_address for gpu in gpus}:
        if not spec.allow_no_nvlink:
            raise PlacementError(
                f"this host's GPUs talk over {len(switches)} NVSwitches, which a guest gets "
                f"only with all {len(every)} GPUs; with {len(gpus)} it has no NVLink (GPU to "
                f"GPU traffic over PCIe). Give the guest all {len(every)} GPUs (one VM per "
                f"node), or set allowNoNvlink: true to accept guests without NVLink")
        return [], False
    held = sorted({taken[s.address] for s in switches if s.address in taken})
    if held:
        raise PlacementError(f"the NVSwitches are held by domain(s) {', '.join(held)}: a guest "
                             f"with all GPUs needs them for NVLink")
    return [_guest_device(facts, s.address, "nvswitch") for s in switches], True


def _pair(gpus: list[GuestDevice], vfs: list[GuestDevice]) -> None:
    """Each VF under a host switch that also holds guest GPUs pairs with one of them (the
    least paired, so two NICs under a switch of two GPUs pair one each): GPUDirect."""
    mates: dict[str, list[GuestDevice]] = {}
    for gpu in gpus:
        if gpu.host_switch:
            mates.setdefault(gpu.host_switch, []).append(gpu)
    load: dict[str, int] = {}
    for vf in vfs:
        candidates = mates.get(vf.host_switch or "", [])
        if not candidates:
            continue
        gpu = min(candidates, key=lambda g: (load.get(g.host_address, 0), g.host_address))
        load[gpu.host_address] = load.get(gpu.host_address, 0) + 1
        vf.paired_with, vf.gpudirect = gpu.host_address, True


def gpu_nic_pairs(layout: Layout) -> list[dict]:
    """For each GPU, the guest NIC NCCL will pair with it and whether that pair has GPUDirect
    locality (one host PCIe switch), as the outputs and the plan report them."""
    vfs = [d for d in layout.devices if d.kind == "vf"]
    pairs = []
    for gpu in (d for d in layout.devices if d.kind == "gpu"):
        local = [vf for vf in vfs if vf.paired_with == gpu.host_address] or \
            [vf for vf in vfs if vf.host_switch and vf.host_switch == gpu.host_switch]
        near = local or [vf for vf in vfs if vf.host_node == gpu.host_node]
        nic = near[0] if near else None
        pairs.append({"gpu": gpu.host_address, "nic": nic.host_address if nic else None,
                      "gpudirect": bool(local),
                      "path": "one PCIe switch" if local else
                      "through the CPU (same NUMA node)" if nic else "no NIC on its node"})
    return pairs


# -- CPUs and memory -------------------------------------------------------------------------------

def _cells(spec: GpuVmArgs, facts: HostFacts, nodes: list[int], hugepage_kib: int,
           pinned: dict[int, str]) -> tuple[list[GuestCell], list[int]]:
    emulator: list[int] = []
    usable: dict[int, list[int]] = {}
    for node_id in nodes:
        node = facts.node(node_id)
        if node is None:
            raise PlacementError(f"host NUMA node {node_id} is not described by the host")
        emulator += node.cpus[:spec.reserved_cpus]
        # Another domain's vCPUs (or its emulator) pinned there would share the core.
        usable[node_id] = [cpu for cpu in node.cpus[spec.reserved_cpus:] if cpu not in pinned]
    if spec.whole_nodes:
        counts = {node: len(usable[node]) for node in nodes}  # pinned CPUs left out
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
            busy = sorted({name for cpu, name in pinned.items()
                           if cpu in facts.node(node).cpus})
            raise PlacementError(f"{counts[node]} vCPUs on host node {node}, which has "
                                 f"{len(usable[node])} CPUs after {spec.reserved_cpus} reserved"
                                 + (f" and those pinned by domain(s) {', '.join(busy)}"
                                    if busy else ""))
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

def _tree(facts: HostFacts, nodes: list[int],
          devices: list[GuestDevice]) -> list[GuestComplex]:
    """GPUs and NVSwitches under their host switch's mirror; a VF there only when it pairs
    with a GPU of that switch (GPUDirect), else on a root port of its own."""
    cell_of = {node: index for index, node in enumerate(nodes)}
    complexes: dict[str, GuestComplex] = {}
    ports: dict[tuple[str, str], GuestSwitch] = {}
    for device in devices:
        host = facts.pci[device.host_address]
        root_complex = host.root_complex or "pci0000:00"
        complex_ = complexes.setdefault(root_complex, GuestComplex(
            host_root_complex=root_complex, cell=cell_of.get(device.host_node, 0)))
        mirrored = device.host_switch is not None and (device.kind != "vf" or device.gpudirect)
        key = (root_complex, device.host_switch if mirrored else "own:" + device.host_address)
        port = ports.get(key)
        if port is None:
            port = GuestSwitch(switch=mirrored,
                               host_upstream=device.host_switch if mirrored else None)
            ports[key] = port
            complex_.ports.append(port)
        port.devices.append(device)
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
