"""The picture model: a host's NUMA nodes, root complexes, PCIe switches and devices as nested
clusters, and each guest's mirrored tree beside it, with the edges that matter for GPUDirect.

Pure: typed data in (`HostFacts`, HostTuning's `Topology`, GpuVm `Layout`s), plain data out.
What a picture shows and why:

- Root complexes that hold a GPU, a selected NIC or an NVSwitch are drawn port by port; any
  other root complex (the chipset's SATA, USB, BMC) is one summary node, so the picture stays
  about the devices vela places.
- A PCIe switch (an upstream port and everything below it) is a cluster holding its ports and
  devices: devices that share a switch share it, which is what GPUDirect RDMA needs. Each host
  switch gets a tone; a guest switch that mirrors it gets the same tone.
- Downstream ports with nothing below them are left out: nothing can be passed through there,
  and an HGX board has one such port per GPU switch.
- The functions of one multi-function device (a dual-port NIC) are one node; virtual
  functions are counted on their physical function's node, not drawn one by one on the host.
- Edges: the PCIe tree, each HostTuning GPU-NIC pair, each guest GPU's NIC (GPUDirect or
  through the CPU), and host device -> guest device for what a guest has passed through.
- Marks: the bridges peer-to-peer traffic of a pair crosses, as HostTuning computes them
  (`gpu_nic_paths`): "acs" where HostTuning writes ACS control (the port has ACS controls and
  `acs` is on), "path" where it crosses a bridge it cannot (or, with `acs` off, does not) set.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, Field

from providers.facts.models import HostFacts, PciDevice
from providers.gpu_vm.placement import (
    GuestComplex,
    GuestDevice,
    GuestSwitch,
    Layout,
    gpu_nic_pairs,
    nvswitches,
)
from providers.host_tuning.target import ACS_MASK, Topology, gpu_nic_paths

GIB_KIB = 1024 * 1024
NO_NODE = "none"  # the cluster of root complexes whose devices report no NUMA node (-1)
# Base class names (PCI Code and ID Assignment Specification, "Base Class" table), for labels of
# devices vela does not place.
PCI_BASE_CLASSES = {
    0x00: "unclassified", 0x01: "storage", 0x02: "network", 0x03: "display",
    0x04: "multimedia", 0x05: "memory", 0x06: "bridge", 0x07: "communication",
    0x08: "system", 0x09: "input", 0x0A: "docking", 0x0B: "processor", 0x0C: "serial bus",
    0x0D: "wireless", 0x0E: "intelligent I/O", 0x0F: "satellite", 0x10: "encryption",
    0x11: "signal processing", 0x12: "accelerator", 0x13: "instrumentation",
    0x40: "coprocessor",
}
PORT_NAMES = {"root_port": "root port", "upstream_port": "upstream port",
              "downstream_port": "downstream port"}


class Node(BaseModel):
    id: str
    # gpu, nic, nvswitch, vf, device (anything else), summary, or a port: root_port,
    # upstream_port, downstream_port
    kind: str
    lines: list[str]  # the label, title first
    marks: list[str] = Field(default_factory=list)  # "acs", "path", "gpudirect"
    addresses: list[str] = Field(default_factory=list)  # the host functions it stands for


class Cluster(BaseModel):
    id: str
    kind: str  # host, numa, complex, switch; guest, cell, expander, guest_switch
    lines: list[str]
    tone: int | None = None  # switches: the host switch's index (a mirror takes its host's)
    nodes: list[Node] = Field(default_factory=list)
    clusters: list[Cluster] = Field(default_factory=list)

    def walk(self) -> Iterator[Cluster]:
        yield self
        for cluster in self.clusters:
            yield from cluster.walk()


class Edge(BaseModel):
    tail: str
    head: str
    kind: str  # tree, pair, pair_cpu, passthrough
    # A guest's tree edge: drawn mirrored (root on the far side), so guest devices face the host
    # devices they are.
    mirrored: bool = False


class GuestLayout(BaseModel):
    name: str
    layout: Layout


class Picture(BaseModel):
    title: str
    host: Cluster
    guests: list[Cluster] = Field(default_factory=list)
    edges: list[Edge] = Field(default_factory=list)

    def clusters(self) -> Iterator[Cluster]:
        for top in [self.host, *self.guests]:
            yield from top.walk()

    def nodes(self) -> Iterator[Node]:
        for cluster in self.clusters():
            yield from cluster.nodes

    def node(self, id_: str) -> Node:
        return next(node for node in self.nodes() if node.id == id_)

    def kinds(self) -> set[str]:
        return {node.kind for node in self.nodes()} | {edge.kind for edge in self.edges} | {
            mark for node in self.nodes() for mark in node.marks}


def picture(facts: HostFacts, topology: Topology, guests: list[GuestLayout] | None = None, *,
            acs: bool = True) -> Picture:
    """The whole picture: the host, and each guest beside it. `acs`: HostTuning's `acs` input
    (on by default), which decides whether the pairs' bridges get ACS control written."""
    host = _Host(facts, topology, acs)
    cluster = host.cluster()
    edges = host.edges + host.pair_edges()
    drawn = [_guest(index, guest, facts, host) for index, guest in enumerate(guests or [])]
    edges += [edge for _, guest_edges in drawn for edge in guest_edges]
    return Picture(title=f"{facts.hostname or 'host'}: PCIe and NUMA topology", host=cluster,
                   guests=[guest_cluster for guest_cluster, _ in drawn], edges=edges)


# -- the host -------------------------------------------------------------------------------------

def slot_of(address: str) -> str:
    """`0000:1a:00.1` -> `0000:1a:00`: the functions of one device share it."""
    return address.rsplit(".", 1)[0]


def cpu_ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the kernel's cpulist format)."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and cpu == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = parts[-1].split("-")[0] + f"-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def contents(kinds: list[str]) -> str:
    """"2 GPUs · 1 NIC": how many devices of each kind (ports and the like not counted)."""
    names = {"gpu": "GPU", "nic": "NIC", "vf": "NIC VF", "nvswitch": "NVSwitch",
             "device": "other device"}
    return " · ".join(plural(kinds.count(kind), name) for kind, name in names.items()
                      if kind in kinds)


def _gib(kib: int | None) -> str:
    return f"{kib / GIB_KIB:.0f} GiB" if kib else "memory ?"


class _Host:
    """Builds the host cluster; remembers which node stands for which host function."""

    def __init__(self, facts: HostFacts, topology: Topology, acs: bool) -> None:
        self.facts = facts
        self.topology = topology
        self.gpus = set(topology.gpus)
        self.nics = set(topology.nic_pfs)
        self.nvswitches = {device.address for device in nvswitches(facts)}
        self.marks = _bridge_marks(facts, topology, acs)
        self.node_of: dict[str, str] = {}  # host function -> node id
        self.tone_of: dict[str, int] = {}  # switch upstream port -> tone
        self.edges: list[Edge] = []

    def cluster(self) -> Cluster:
        host = Cluster(id="host", kind="host", lines=[f"host {self.facts.hostname or '?'}"])
        complexes = sorted({device.root_complex or "?" for device in self.facts.pci.values()})
        by_node: dict[str, list[str]] = {}
        for complex_ in complexes:
            by_node.setdefault(self._complex_node(complex_), []).append(complex_)
        known = [str(node.id) for node in self.facts.numa_nodes]
        for node_id in known + sorted(set(by_node) - set(known)):
            numa = self._numa(node_id)
            numa.clusters = [self._complex(complex_) for complex_ in by_node.get(node_id, [])]
            host.clusters.append(numa)
        return host

    def _functions(self, complex_: str) -> list[PciDevice]:
        return [device for _, device in sorted(self.facts.pci.items())
                if (device.root_complex or "?") == complex_]

    def _complex_node(self, complex_: str) -> str:
        """The NUMA node a root complex sits on: the one its functions report."""
        nodes = [device.numa_node for device in self._functions(complex_)
                 if device.numa_node is not None]
        return str(max(set(nodes), key=nodes.count)) if nodes else NO_NODE

    def _numa(self, node_id: str) -> Cluster:
        node = self.facts.node(int(node_id)) if node_id != NO_NODE else None
        if node is None:
            lines = ["no NUMA node" if node_id == NO_NODE else f"NUMA node {node_id}"]
        else:
            lines = [f"NUMA node {node.id}",
                     f"CPUs {cpu_ranges(node.cpus)} · {_gib(node.memory_kib)}"]
        return Cluster(id=f"numa:{node_id}", kind="numa", lines=lines)

    def _complex(self, complex_: str) -> Cluster:
        functions = self._functions(complex_)
        cluster = Cluster(id=f"complex:{complex_}", kind="complex", lines=[
            f"root complex {complex_}"])
        placed = self.gpus | self.nics | self.nvswitches
        if not placed & {device.address for device in functions}:
            cluster.nodes.append(_summary(complex_, functions))
            return cluster
        for device in functions:
            if device.parent is None:
                self._place(device, cluster)
        return cluster

    def _place(self, device: PciDevice, container: Cluster) -> str | None:
        """Draw `device` (a bridge with its subtree, or an endpoint) into `container`; return
        its node id (None: left out)."""
        if device.is_virtual_function:
            return None
        if not device.is_bridge:
            return self._endpoint(device, container)
        below = [other for other in self.facts.under(device.address)
                 if not other.is_bridge and not other.is_virtual_function]
        if not below:
            return None  # an empty port: nothing to pass through there
        inside = container
        if device.port_type == "upstream_port":
            self.tone_of[device.address] = len(self.tone_of)
            inside = Cluster(id=f"switch:{device.address}", kind="switch",
                             tone=self.tone_of[device.address], lines=[
                                 f"PCIe switch {device.address} ({device.vendor_device})"])
            container.clusters.append(inside)
        node = Node(id=f"h:{device.address}", kind=device.port_type or "bridge",
                    lines=[PORT_NAMES.get(device.port_type or "", "bridge"), device.address],
                    marks=self.marks.get(device.address, []), addresses=[device.address])
        inside.nodes.append(node)
        self.node_of[device.address] = node.id
        for _, child in sorted(self.facts.pci.items()):
            if child.parent == device.address:
                child_id = self._place(child, inside)
                if child_id and Edge(tail=node.id, head=child_id, kind="tree") not in self.edges:
                    self.edges.append(Edge(tail=node.id, head=child_id, kind="tree"))
        if inside is not container:
            # What the switch holds, in its title: the GPU-NIC groups show from afar.
            inside.lines.append(contents([node.kind for inner in inside.walk()
                                          for node in inner.nodes]))
        return node.id

    def _endpoint(self, device: PciDevice, container: Cluster) -> str:
        slot = slot_of(device.address)
        node_id = f"h:{slot}"
        existing = next((node for node in container.nodes if node.id == node_id), None)
        if existing is None:
            existing = Node(id=node_id, kind="device", lines=[])
            container.nodes.append(existing)
        existing.addresses.append(device.address)
        self.node_of[device.address] = node_id
        functions = [self.facts.pci[address] for address in existing.addresses]
        existing.kind, existing.lines = self._describe(functions)
        return node_id

    def _describe(self, functions: list[PciDevice]) -> tuple[str, list[str]]:
        addresses = [function.address for function in functions]
        where = addresses[0] if len(addresses) == 1 else \
            f"{addresses[0]}-{addresses[-1].rsplit('.', 1)[1]}"
        ids = sorted({function.vendor_device for function in functions})
        kind = next((kind for kind, chosen in [("gpu", self.gpus), ("nvswitch", self.nvswitches),
                                               ("nic", self.nics)]
                     if chosen & set(addresses)), "device")
        title = {"gpu": "GPU", "nvswitch": "NVSwitch", "nic": "NIC"}.get(
            kind, PCI_BASE_CLASSES.get(functions[0].base_class, "device"))
        if len(functions) > 1:
            title += f", {len(functions)} functions"
        lines = [title, where, " ".join(ids)]
        nets = [name for function in functions for name in function.net]
        if nets:
            lines.append(" ".join(nets))
        vfs = sum(len(function.virtfns) for function in functions)
        if vfs:
            lines.append(plural(vfs, "VF"))
        return kind, lines

    def pair_edges(self) -> list[Edge]:
        return [Edge(tail=self.node_of[pair.gpu], head=self.node_of[pair.nic], kind="pair")
                for pair in self.topology.pairs
                if pair.nic and pair.gpu in self.node_of and pair.nic in self.node_of]


def _bridge_marks(facts: HostFacts, topology: Topology, acs: bool) -> dict[str, list[str]]:
    """Bridge -> its mark, over HostTuning's own GPU-NIC paths (`gpu_nic_paths`: each GPU to
    every selected NIC under its switch, all of which get ACS)."""
    marks: dict[str, list[str]] = {}
    for path in gpu_nic_paths(facts, topology):
        for bridge in path:
            caps = facts.pci[bridge].caps if bridge in facts.pci else None
            settable = bool(caps and caps.acs and caps.acs.capability & ACS_MASK)
            marks[bridge] = ["acs" if acs and settable else "path"]
    return marks


def _summary(complex_: str, functions: list[PciDevice]) -> Node:
    endpoints = [device for device in functions
                 if not device.is_bridge and not device.is_virtual_function]
    counts: dict[str, int] = {}
    for device in endpoints:
        name = PCI_BASE_CLASSES.get(device.base_class, "other")
        counts[name] = counts.get(name, 0) + 1
    return Node(id=f"h:{complex_}:others", kind="summary",
                lines=[f"{len(endpoints)} other functions",
                       ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))],
                addresses=[device.address for device in endpoints])


# -- a guest ------------------------------------------------------------------------------------

def _guest(index: int, guest: GuestLayout, facts: HostFacts,
           host: _Host) -> tuple[Cluster, list[Edge]]:
    layout = guest.layout
    prefix = f"g{index}"
    top = Cluster(id=prefix, kind="guest", lines=[
        f"guest {guest.name}",
        f"{plural(layout.vcpus, 'vCPU')} · {_gib(layout.memory_kib)}"
        + ("" if layout.nvlink is None else f" · NVLink {'yes' if layout.nvlink else 'no'}")])
    edges: list[Edge] = []
    node_of: dict[str, str] = {}
    for cell in layout.cells:
        where = f"host node {cell.host_node}" if cell.host_node >= 0 else "no single host node"
        cluster = Cluster(id=f"{prefix}:cell:{cell.id}", kind="cell", lines=[
            f"cell {cell.id} on {where}",
            f"vCPUs {cpu_ranges(cell.vcpus)} on CPUs {cpu_ranges(cell.host_cpus)}"
            f" · {_gib(cell.memory_kib)}"])
        for complex_ in (c for c in layout.complexes if c.cell == cell.id):
            cluster.clusters.append(_expander(prefix, complex_, host, edges, node_of))
        if not cluster.clusters:
            cluster.nodes.append(Node(id=f"{prefix}:cell:{cell.id}:cpus", kind="summary",
                                      lines=["no PCIe devices"]))
        top.clusters.append(cluster)
    cells = {cell.id for cell in layout.cells}
    for complex_ in (c for c in layout.complexes if c.cell not in cells):
        # A domain without NUMA cells: its expanders sit in the guest itself.
        top.clusters.append(_expander(prefix, complex_, host, edges, node_of))
    for pair in gpu_nic_pairs(layout):
        if pair["nic"] in node_of and pair["gpu"] in node_of:
            edges.append(Edge(tail=node_of[pair["gpu"]], head=node_of[pair["nic"]],
                              kind="pair" if pair["gpudirect"] else "pair_cpu"))
    for device in layout.devices:
        source = device.host_address
        if source in facts.pci and facts.pci[source].physfn:
            source = facts.pci[source].physfn
        if source in host.node_of and device.host_address in node_of:
            edges.append(Edge(tail=host.node_of[source], head=node_of[device.host_address],
                              kind="passthrough"))
    return top, edges


def _expander(prefix: str, complex_: GuestComplex, host: _Host, edges: list[Edge],
              node_of: dict[str, str]) -> Cluster:
    cluster = Cluster(id=f"{prefix}:pxb:{complex_.bus_nr}", kind="expander", lines=[
        f"expander bus {complex_.bus_nr:#04x}", f"mirrors {complex_.host_root_complex}"])
    for number, port in enumerate(complex_.ports):
        root = Node(id=f"{prefix}:rp:{complex_.bus_nr}:{number}", kind="root_port",
                    lines=["root port"])
        cluster.nodes.append(root)
        if not port.switch:
            device = _guest_device(prefix, port.devices[0])
            cluster.nodes.append(device)
            node_of[port.devices[0].host_address] = device.id
            edges.append(Edge(tail=root.id, head=device.id, kind="tree", mirrored=True))
            continue
        cluster.clusters.append(_guest_switch(prefix, root, port, host, edges, node_of))
    return cluster


def _guest_switch(prefix: str, root: Node, port: GuestSwitch, host: _Host, edges: list[Edge],
                  node_of: dict[str, str]) -> Cluster:
    upstream = port.host_upstream or "?"
    switch = Cluster(id=f"{prefix}:switch:{upstream}", kind="guest_switch",
                     tone=host.tone_of.get(upstream),
                     lines=["PCIe switch", f"mirrors {upstream}"])
    up = Node(id=f"{prefix}:up:{upstream}", kind="upstream_port", lines=["upstream port"])
    switch.nodes.append(up)
    edges.append(Edge(tail=root.id, head=up.id, kind="tree", mirrored=True))
    switch.lines.append(contents([device.kind for device in port.devices]))
    for device in port.devices:
        down = Node(id=f"{prefix}:down:{device.host_address}", kind="downstream_port",
                    lines=["downstream port"])
        node = _guest_device(prefix, device)
        switch.nodes += [down, node]
        node_of[device.host_address] = node.id
        edges += [Edge(tail=up.id, head=down.id, kind="tree", mirrored=True),
                  Edge(tail=down.id, head=node.id, kind="tree", mirrored=True)]
    return switch


def _guest_device(prefix: str, device: GuestDevice) -> Node:
    title = {"gpu": "GPU", "vf": "NIC VF", "nvswitch": "NVSwitch"}.get(device.kind, device.kind)
    lines = [title, f"guest {device.guest_address or '?'}", f"host {device.host_address}"]
    if device.kind == "vf":
        lines.append("GPUDirect (one switch)" if device.gpudirect else "no GPU on its switch")
    return Node(id=f"{prefix}:{device.host_address}", kind=device.kind, lines=lines,
                marks=["gpudirect"] if device.gpudirect else [],
                addresses=[device.host_address])
