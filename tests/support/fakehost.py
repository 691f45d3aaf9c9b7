"""A builder of fake host roots: the sysfs and procfs files vela reads, laid out as Linux does.

Tests describe hardware (NUMA nodes, root complexes, root ports, PCIe switches, endpoints,
SR-IOV virtual functions) and `FakeHost.write(root)` produces a directory tree that
`providers.facts` reads exactly like a real `/`: device directories nested under their bridges,
`bus/pci/devices` links, `driver`, `iommu_group`, `physfn`/`virtfnN` links, config space files,
NUMA nodes with huge page pools. IOMMU groups follow the kernel's rule (a device shares the group
of the highest bridge above it whose ACS path is not enabled; functions of a multi-function
device without ACS share one group).

Impossible hardware is refused with `ImpossibleHardware`: duplicate addresses, devices under
something that is not a bridge, VFs beyond TotalVFs or on a device without SR-IOV, NUMA nodes
that do not exist, huge pages beyond a node's memory, an AMD IOMMU on an Intel CPU, ...
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from providers.facts.parse import parse_cpulist

from .pciconfig_builder import ConfigSpec, build_config

ACS_REQUIRED = 0x01 | 0x04 | 0x08 | 0x10  # SV, RR, CR, UF: what the kernel needs for isolation
ACS_LINUX_DEFAULT = ACS_REQUIRED  # what Linux enables at boot with an IOMMU on
ACS_EGRESS_CONTROL = 0x20
CLASS_PCI_BRIDGE = 0x060400
STANDARD_DIRECTORIES = ["etc/modprobe.d", "etc/modules-load.d", "etc/sysctl.d",
                        "etc/systemd/system/multi-user.target.wants", "usr/local/sbin",
                        "var/lib"]


class ImpossibleHardware(ValueError):
    """The described hardware cannot exist."""


@dataclass(eq=False)  # identity: functions link to each other (parent, physfn, virtfns)
class Function:
    """One PCI function of the fake host."""

    domain: int
    bus: int
    device: int
    function: int
    vendor_id: int
    device_id: int
    class_code: int
    port_type: str
    parent: Function | None
    root_complex: RootComplex
    driver: str | None = None
    net: list[str] = field(default_factory=list)
    secondary_bus: int | None = None  # bridges only
    acs: tuple[int, int] | None = None
    ats_control: int | None = None
    max_read_request: int = 512
    sriov_total: int | None = None
    sriov_vf_device: int | None = None
    sriov_offset: int = 0
    sriov_stride: int = 1
    physfn: Function | None = None
    virtfns: list[Function] = field(default_factory=list)
    multifunction: bool = False
    iommu_group: int | None = None
    bars: list[int] = field(default_factory=list)  # BAR sizes in bytes, as `resource` shows

    @property
    def address(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"

    @property
    def is_bridge(self) -> bool:
        return self.secondary_bus is not None

    @property
    def numa_node(self) -> int:
        return self.root_complex.numa_node

    def chain(self) -> list[Function]:
        """Bridges above this function, root port first."""
        bridges, current = [], self.parent
        while current is not None:
            bridges.append(current)
            current = current.parent
        return bridges[::-1]

    def acs_enabled(self) -> bool:
        """The kernel's pci_acs_enabled(). Only root and downstream ports, and functions of
        multi-function devices, need ACS; anything else is isolated by construction. Where
        ACS is needed, the required controls masked by what the capability supports must all
        be on (a capability that supports nothing counts as enabled; none at all does not)."""
        if self.port_type not in {"root_port", "downstream_port"} and not self.multifunction:
            return True
        if self.acs is None:
            return False
        capability, control = self.acs
        required = ACS_REQUIRED & (capability | ACS_EGRESS_CONTROL)
        return control & required == required


@dataclass
class RootComplex:
    domain: int
    bus: int
    numa_node: int
    next_bus: int = 0

    @property
    def name(self) -> str:
        return f"pci{self.domain:04x}:{self.bus:02x}"


@dataclass
class Switch:
    upstream: Function
    downstream: list[Function]


@dataclass
class NumaSpec:
    id: int
    cpus: list[int]
    memory_kib: int
    hugepages: dict[int, int]  # size in KiB -> pages reserved


class FakeHost:
    """Describe a host, then `write(root)` it."""

    def __init__(self, *, hostname: str = "fakehost", cpu_vendor: str = "GenuineIntel",
                 iommu_table: str | None = "DMAR", iommu_active: bool = True,
                 kernel: str = "6.1.0-28-amd64",
                 cmdline: str = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 root=UUID="
                                "3f1c2b9e-5a8d-4e61-9c0e-2b7f4a6d8e10 ro quiet",
                 default_hugepage_kib: int = 2048, grub_defaults: str | None = None,
                 cpu_flags: str | None = None, kvm: bool = True, lockdown: str | None = "none",
                 processes: tuple[str, ...] = (), phys_bits: int | None = None) -> None:
        """`cpu_flags`: the flags line of /proc/cpuinfo (None: a bare-metal CPU's, with vmx or
        svm); `phys_bits`: the physical half of its "address sizes" line (None: no such line,
        which gathering reads as unknown); `kvm`: /dev/kvm exists; `lockdown`: the kernel
        lockdown level (None: no securityfs file); `processes`: names of running processes
        (/proc/PID/comm)."""
        if cpu_vendor not in {"GenuineIntel", "AuthenticAMD"}:
            raise ImpossibleHardware(f"unknown CPU vendor {cpu_vendor!r}")
        expected_table = "DMAR" if cpu_vendor == "GenuineIntel" else "IVRS"
        if iommu_table not in (None, expected_table):
            raise ImpossibleHardware(f"a {cpu_vendor} host publishes {expected_table}, "
                                     f"not {iommu_table}")
        if iommu_active and iommu_table is None:
            raise ImpossibleHardware("an IOMMU cannot be active without its ACPI table")
        if lockdown not in (None, "none", "integrity", "confidentiality"):
            raise ImpossibleHardware(f"no kernel lockdown level {lockdown!r}")
        self.hostname = hostname
        self.cpu_vendor = cpu_vendor
        self.iommu_table = iommu_table
        self.iommu_active = iommu_active
        self.kernel = kernel
        self.cmdline = cmdline
        self.default_hugepage_kib = default_hugepage_kib
        self.grub_defaults = grub_defaults
        virtualization = "vmx" if cpu_vendor == "GenuineIntel" else "svm"
        self.cpu_flags = cpu_flags if cpu_flags is not None else \
            f"fpu vme de pse tsc msr pae mce cx8 apic sep pge cmov pat clflush sse sse2 ht " \
            f"syscall nx pdpe1gb lm {virtualization} x2apic popcnt aes avx"
        self.phys_bits = phys_bits
        self.kvm = kvm
        self.lockdown = lockdown
        self.processes = tuple(processes)
        self.modules: set[str] = set()
        self.nodes: dict[int, NumaSpec] = {}
        self.complexes: list[RootComplex] = []
        self.functions: dict[str, Function] = {}

    # -- NUMA ------------------------------------------------------------------------------------

    def numa_node(self, node_id: int, cpus: str, memory_gib: int,
                  hugepages: dict[int, int] | None = None) -> NumaSpec:
        if node_id in self.nodes:
            raise ImpossibleHardware(f"NUMA node {node_id} is described twice")
        cpu_list = parse_cpulist(cpus)
        taken = {cpu for node in self.nodes.values() for cpu in node.cpus}
        if taken & set(cpu_list):
            raise ImpossibleHardware(f"CPUs {sorted(taken & set(cpu_list))} are on two nodes")
        pools = dict(hugepages or {})
        for size in (2048, 1048576):
            pools.setdefault(size, 0)
        reserved = sum(size * count for size, count in pools.items())
        if reserved > memory_gib * 1024 * 1024:
            raise ImpossibleHardware(f"node {node_id}: {reserved} KiB of huge pages exceed its "
                                     f"{memory_gib} GiB of memory")
        spec = NumaSpec(node_id, cpu_list, memory_gib * 1024 * 1024, pools)
        self.nodes[node_id] = spec
        return spec

    # -- PCI tree --------------------------------------------------------------------------------

    def root_complex(self, bus: int, numa_node: int, domain: int = 0) -> RootComplex:
        if numa_node not in self.nodes:
            raise ImpossibleHardware(f"root complex {domain:04x}:{bus:02x} is on NUMA node "
                                     f"{numa_node}, which is not described")
        if any(rc.domain == domain and rc.bus == bus for rc in self.complexes):
            raise ImpossibleHardware(f"root complex {domain:04x}:{bus:02x} exists already")
        complex_ = RootComplex(domain, bus, numa_node, next_bus=bus + 1)
        self.complexes.append(complex_)
        return complex_

    def root_port(self, complex_: RootComplex, device: int, function: int = 0, *,
                  vendor_id: int = 0x8086, device_id: int = 0x347A,
                  acs: tuple[int, int] | None = (0x001F, ACS_LINUX_DEFAULT)) -> Function:
        return self._bridge(complex_, None, complex_.bus, device, function, "root_port",
                            vendor_id, device_id, acs)

    def switch(self, port: Function, downstream_ports: int, *, vendor_id: int = 0x1000,
               device_id: int = 0xC010,
               acs: tuple[int, int] | None = (0x005F, ACS_LINUX_DEFAULT)) -> Switch:
        """A PCIe switch below `port`: one upstream port, N downstream ports (devices 0..N-1)."""
        self._require_downstream_facing(port)
        upstream = self._bridge(port.root_complex, port, port.secondary_bus, 0, 0,
                                "upstream_port", vendor_id, device_id, None)
        downstream = [self._bridge(port.root_complex, upstream, upstream.secondary_bus, index, 0,
                                   "downstream_port", vendor_id, device_id, acs)
                      for index in range(downstream_ports)]
        return Switch(upstream, downstream)

    def endpoint(self, port: Function, *, vendor_id: int, device_id: int, class_code: int,
                 functions: int = 1, driver: str | None = None, net: list[str] | None = None,
                 port_type: str = "endpoint", max_read_request: int = 512,
                 ats_control: int | None = None, acs: tuple[int, int] | None = None,
                 sriov_total_vfs: int | None = None, sriov_vf_device: int | None = None,
                 device: int = 0, bars: list[int] | None = None) -> list[Function]:
        """A device in the slot below `port`, with 1-8 functions (net names per function)."""
        self._require_downstream_facing(port)
        # A root port's or downstream port's link has one component below it, Device 0 (PCIe
        # Base spec r3.1 sec 7.3.1 Device Number; with ARI forwarding its Functions take the
        # device bits, still one component), and Linux scans only devfn 0 below such a port
        # (drivers/pci/probe.c only_one_child() -> pcie_downstream_port(), pci_scan_slot()).
        # VFs are not scanned (drivers/pci/iov.c pci_iov_add_virtfn): add_vfs may use others.
        if device != 0:
            raise ImpossibleHardware(f"{port.address} is a {port.port_type}: its link has "
                                     f"only device 0 below it, not device {device}")
        if not 1 <= functions <= 8:
            raise ImpossibleHardware(f"a PCI device has 1 to 8 functions, not {functions}")
        if net is not None and len(net) != functions:
            raise ImpossibleHardware("give one network interface name per function")
        if (sriov_total_vfs is None) != (sriov_vf_device is None):
            raise ImpossibleHardware("SR-IOV needs both a TotalVFs and a VF device id")
        created = []
        for index in range(functions):
            function = self._add(Function(
                domain=port.domain, bus=port.secondary_bus, device=device, function=index,
                vendor_id=vendor_id, device_id=device_id, class_code=class_code,
                port_type=port_type, parent=port, root_complex=port.root_complex,
                driver=driver, net=[net[index]] if net else [], acs=acs,
                ats_control=ats_control, max_read_request=max_read_request,
                sriov_total=sriov_total_vfs, sriov_vf_device=sriov_vf_device,
                multifunction=functions > 1, bars=list(bars or [])))
            created.append(function)
        self._place_vf_ranges(created)
        return created

    def add_vfs(self, pf: Function, count: int, *, driver: str | None = None,
                net_prefix: str | None = None) -> list[Function]:
        """Enable `count` VFs on a PF, as `echo count > sriov_numvfs` does."""
        if pf.physfn is not None:
            raise ImpossibleHardware(f"{pf.address} is a VF: VFs cannot have VFs")
        if pf.sriov_total is None:
            raise ImpossibleHardware(f"{pf.address} has no SR-IOV capability")
        if pf.virtfns:
            raise ImpossibleHardware(f"{pf.address} has VFs already: the kernel needs 0 first")
        if not 0 <= count <= pf.sriov_total:
            raise ImpossibleHardware(f"{pf.address} supports at most {pf.sriov_total} VFs, "
                                     f"not {count}")
        for index in range(count):
            rid = (pf.bus << 8 | pf.device << 3 | pf.function) + pf.sriov_offset \
                + pf.sriov_stride * index
            vf = self._add(Function(
                domain=pf.domain, bus=rid >> 8, device=(rid >> 3) & 0x1F, function=rid & 7,
                vendor_id=pf.vendor_id, device_id=pf.sriov_vf_device, class_code=pf.class_code,
                port_type="endpoint", parent=pf.parent, root_complex=pf.root_complex,
                driver=driver, net=[f"{net_prefix}v{index}"] if net_prefix else [],
                ats_control=pf.ats_control, max_read_request=pf.max_read_request, physfn=pf))
            pf.virtfns.append(vf)
        return pf.virtfns

    # -- writing ---------------------------------------------------------------------------------

    def write(self, root: str | os.PathLike) -> Path:
        """Write the tree under `root` (created if missing) and return it."""
        if not self.nodes:
            raise ImpossibleHardware("a host needs at least one NUMA node")
        root = Path(root)
        self._assign_iommu_groups()
        _HostWriter(self, root).write()
        return root

    def config_space(self, address: str) -> bytes:
        """The power-on config space of a function (what a reboot returns it to)."""
        function = self.functions[address]
        return build_config(_config_spec(function, function.physfn is not None,
                                         list(self.functions.values())))

    # -- internals -------------------------------------------------------------------------------

    def _bridge(self, complex_: RootComplex, parent: Function | None, bus: int, device: int,
                function: int, port_type: str, vendor_id: int, device_id: int,
                acs: tuple[int, int] | None) -> Function:
        secondary = complex_.next_bus
        if secondary > 0xFF:
            raise ImpossibleHardware(f"root complex {complex_.name} ran out of bus numbers")
        complex_.next_bus += 1
        return self._add(Function(
            domain=complex_.domain, bus=bus, device=device, function=function,
            vendor_id=vendor_id, device_id=device_id, class_code=CLASS_PCI_BRIDGE,
            port_type=port_type, parent=parent, root_complex=complex_, driver="pcieport",
            secondary_bus=secondary, acs=acs, max_read_request=128))

    def _add(self, function: Function) -> Function:
        if function.device > 0x1F or function.function > 7:
            raise ImpossibleHardware(f"{function.address}: device 0-1f, function 0-7 only")
        if function.address in self.functions:
            raise ImpossibleHardware(f"two functions at {function.address}")
        names = {name for other in self.functions.values() for name in other.net}
        if names & set(function.net):
            raise ImpossibleHardware(f"interface name(s) {sorted(names & set(function.net))} "
                                     f"are taken")
        self.functions[function.address] = function
        return function

    @staticmethod
    def _require_downstream_facing(port: Function) -> None:
        if port.port_type not in {"root_port", "downstream_port"}:
            raise ImpossibleHardware(f"{port.address} is a {port.port_type}: devices attach "
                                     f"only below a root port or a switch downstream port")
        if port.physfn is not None:
            raise ImpossibleHardware(f"{port.address} is a VF")

    @staticmethod
    def _place_vf_ranges(pfs: list[Function]) -> None:
        """First VF Offset per PF so that the VFs of all PFs of a device do not overlap (what
        ConnectX firmware does: PF0 offset 2, PF1 offset 1 + PF0's TotalVFs, ...)."""
        before = 0
        for index, pf in enumerate(pfs):
            if pf.sriov_total is None:
                continue
            pf.sriov_offset = (len(pfs) - index) + before
            before += pf.sriov_total

    def _assign_iommu_groups(self) -> None:
        if not self.iommu_active:
            return
        owners: dict[str, str] = {}
        for function in self.functions.values():
            owners[function.address] = self._group_owner(function).address
        numbers = {owner: index for index, owner in enumerate(sorted(set(owners.values())))}
        for function in self.functions.values():
            function.iommu_group = numbers[owners[function.address]]

    def _group_owner(self, function: Function) -> Function:
        """The kernel's pci_device_group(), reduced to what the fake hardware can express."""
        owner = function
        if function.multifunction and function.function != 0 and not function.acs_enabled():
            sibling = self.functions.get(f"{function.domain:04x}:{function.bus:02x}:"
                                         f"{function.device:02x}.0")
            owner = sibling or function
        bridge = owner.parent
        while bridge is not None:
            if all(b.acs_enabled() for b in [bridge, *bridge.chain()]):
                break
            owner = bridge
            bridge = bridge.parent
        return owner


class _HostWriter:
    """Writes a `FakeHost` as files. Symlinks are relative so the tree works wherever it is."""

    def __init__(self, host: FakeHost, root: Path) -> None:
        self.host = host
        self.root = root

    def write(self) -> None:
        self._procfs()
        self._numa()
        self._iommu()
        for function in self.host.functions.values():
            self._function(function)

    def _file(self, relative: str, content: str | bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    def _link(self, relative: str, target: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.root / target).mkdir(parents=True, exist_ok=True)  # every link target is a dir
        path.symlink_to(os.path.relpath(self.root / target, path.parent))

    def _procfs(self) -> None:
        host = self.host
        cpus = sorted(cpu for node in host.nodes.values() for cpu in node.cpus)
        # Every processor's block has the line, after its flags, as arch/x86/kernel/cpu/proc.c
        # show_cpuinfo prints it: "address sizes\t: %u bits physical, %u bits virtual".
        sizes = (f"address sizes\t: {host.phys_bits} bits physical, 48 bits virtual\n"
                 if host.phys_bits is not None else "")
        self._file("proc/cpuinfo", "".join(
            f"processor\t: {cpu}\nvendor_id\t: {host.cpu_vendor}\nflags\t\t: {host.cpu_flags}\n"
            f"{sizes}\n" for cpu in cpus))
        self._file("proc/cmdline", host.cmdline + "\n")
        self._file("proc/sys/kernel/hostname", host.hostname + "\n")
        self._file("proc/sys/kernel/osrelease", host.kernel + "\n")
        self._file("proc/sys/kernel/random/boot_id", str(uuid.uuid4()) + "\n")
        self._file("proc/modules", "".join(f"{name} 16384 0 - Live 0x0000000000000000\n"
                                           for name in sorted(host.modules)))
        if host.grub_defaults is not None:
            self._file("etc/default/grub", host.grub_defaults)
        if host.kvm:
            self._file("dev/kvm", "")  # a character device on a real host: its presence counts
        if host.lockdown is not None:  # as security/lockdown/lockdown.c prints it
            self._file("sys/kernel/security/lockdown", " ".join(
                f"[{level}]" if level == host.lockdown else level
                for level in ("none", "integrity", "confidentiality")) + "\n")
        for pid, name in enumerate(host.processes, 1000):
            self._file(f"proc/{pid}/comm", name[:15] + "\n")  # TASK_COMM_LEN: 15 + NUL
        # The directories every Debian/RHEL root has, which configuration lands in.
        for directory in STANDARD_DIRECTORIES:
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        total = sum(node.memory_kib for node in host.nodes.values())
        default = host.default_hugepage_kib
        pages = sum(node.hugepages.get(default, 0) for node in host.nodes.values())
        self._file("proc/meminfo", (
            f"MemTotal:       {total} kB\nHugePages_Total:   {pages}\n"
            f"HugePages_Free:    {pages}\nHugepagesize:       {default} kB\n"))

    def _numa(self) -> None:
        base = "sys/devices/system/node"
        ids = sorted(self.host.nodes)
        self._file(f"{base}/online", _cpulist(ids) + "\n")
        for node in self.host.nodes.values():
            self._file(f"{base}/node{node.id}/cpulist", _cpulist(node.cpus) + "\n")
            self._file(f"{base}/node{node.id}/meminfo",
                       f"Node {node.id} MemTotal:       {node.memory_kib} kB\n")
            for size, count in node.hugepages.items():
                pool = f"{base}/node{node.id}/hugepages/hugepages-{size}kB"
                self._file(f"{pool}/nr_hugepages", f"{count}\n")
                self._file(f"{pool}/free_hugepages", f"{count}\n")

    def _iommu(self) -> None:
        host = self.host
        if host.iommu_table:
            self._file(f"sys/firmware/acpi/tables/{host.iommu_table}", b"\0" * 48)
        (self.root / "sys/kernel/iommu_groups").mkdir(parents=True, exist_ok=True)
        (self.root / "sys/class/iommu").mkdir(parents=True, exist_ok=True)
        if host.iommu_active:
            unit = "dmar0" if host.iommu_table == "DMAR" else "ivhd0"
            self._link(f"sys/class/iommu/{unit}", f"sys/devices/virtual/iommu/{unit}")

    def _device_dir(self, function: Function) -> str:
        chain = "/".join(bridge.address for bridge in function.chain())
        middle = f"{chain}/" if chain else ""
        return f"sys/devices/{function.root_complex.name}/{middle}{function.address}"

    def _function(self, function: Function) -> None:
        directory = self._device_dir(function)
        is_vf = function.physfn is not None
        self._file(f"{directory}/vendor", f"0x{function.vendor_id:04x}\n")
        self._file(f"{directory}/device", f"0x{function.device_id:04x}\n")
        self._file(f"{directory}/class", f"0x{function.class_code:06x}\n")
        self._file(f"{directory}/subsystem_vendor", f"0x{function.vendor_id:04x}\n")
        self._file(f"{directory}/subsystem_device", "0x0000\n")
        self._file(f"{directory}/numa_node", f"{function.numa_node}\n")
        self._file(f"{directory}/driver_override", "(null)\n")
        self._file(f"{directory}/config", build_config(
            _config_spec(function, is_vf, list(self.host.functions.values()))))
        if function.sriov_total is not None:
            self._file(f"{directory}/sriov_totalvfs", f"{function.sriov_total}\n")
            self._file(f"{directory}/sriov_numvfs", f"{len(function.virtfns)}\n")
        for name in function.net:
            self._file(f"{directory}/net/{name}/ifindex", "1\n")
        self._file(f"{directory}/resource", _resource(function))
        self._link(f"sys/bus/pci/devices/{function.address}", directory)
        if function.driver:
            self._link(f"{directory}/driver", f"sys/bus/pci/drivers/{function.driver}")
            self._link(f"sys/bus/pci/drivers/{function.driver}/{function.address}", directory)
        if function.iommu_group is not None:
            group = f"sys/kernel/iommu_groups/{function.iommu_group}"
            self._link(f"{directory}/iommu_group", group)
            self._link(f"{group}/devices/{function.address}", directory)
        if function.physfn is not None:
            self._link(f"{directory}/physfn", self._device_dir(function.physfn))
        for index, vf in enumerate(function.virtfns):
            self._link(f"{directory}/virtfn{index}", self._device_dir(vf))


def _config_spec(function: Function, is_vf: bool, everything: list[Function]) -> ConfigSpec:
    sriov = None
    if function.sriov_total is not None:
        sriov = {"total_vfs": function.sriov_total, "num_vfs": len(function.virtfns),
                 "vf_offset": function.sriov_offset, "vf_stride": function.sriov_stride,
                 "vf_device_id": function.sriov_vf_device}
    return ConfigSpec(
        # A VF's own config space reads 0xffff for vendor and device (the PF's SR-IOV
        # capability holds the VF device id); sysfs shows the real ids.
        vendor_id=0xFFFF if is_vf else function.vendor_id,
        device_id=0xFFFF if is_vf else function.device_id,
        class_code=function.class_code, port_type=function.port_type,
        bridge=function.is_bridge, multifunction=function.multifunction,
        primary_bus=function.bus,
        secondary_bus=function.secondary_bus or 0,
        subordinate_bus=_subordinate(function, everything),
        max_read_request=function.max_read_request,
        acs=function.acs, ats_control=function.ats_control, sriov=sriov)


def _subordinate(function: Function, everything: list[Function]) -> int:
    """The highest bus number below a bridge (0 for endpoints)."""
    if function.secondary_bus is None:
        return 0
    below = [other.bus for other in everything if function in other.chain()]
    below += [other.secondary_bus for other in everything
              if other.secondary_bus is not None and function in other.chain()]
    return max([function.secondary_bus, *below])


def _cpulist(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'"""
    ranges: list[str] = []
    start = previous = None
    for cpu in sorted(cpus):
        if start is None:
            start = previous = cpu
        elif cpu == previous + 1:
            previous = cpu
        else:
            ranges.append(f"{start}-{previous}" if start != previous else f"{start}")
            start = previous = cpu
    if start is not None:
        ranges.append(f"{start}-{previous}" if start != previous else f"{start}")
    return ",".join(ranges)


def _resource(function: Function) -> str:
    """The `resource` file: start, end and flags of 13 regions (BARs 0-5 first), as sysfs has
    it. Addresses are made up but aligned; only the sizes matter to readers."""
    lines = []
    base = 0x38000000000 + (function.bus << 36) + (function.device << 32)
    for index in range(13):
        size = function.bars[index] if index < len(function.bars) else 0
        if size:
            start = base + (index << 31)
            flags = 0x14220C if size > 0xFFFFFFFF else 0x40200
            lines.append(f"0x{start:016x} 0x{start + size - 1:016x} 0x{flags:016x}")
        else:
            lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
    return "\n".join(lines) + "\n"
