"""The typed picture of one hypervisor host's hardware, as every provider sees it.

Plain data plus read-only queries (which switch a device sits under, which devices share it).
Nothing here touches a host; `providers.facts.gather` builds these from one round trip.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from .cmdline import cmdline_params, parse_cmdline
from .pciconfig import PcieCapabilities

PCI_CLASS_BRIDGE = 0x06
PCI_SUBCLASS_PCI_BRIDGE = 0x04
# The daemons that keep NVIDIA GPUs (and NVSwitches) open, by the name /proc/PID/comm shows: the
# kernel keeps 15 characters of a process name (TASK_COMM_LEN 16, with the terminating NUL).
GPU_HOLDERS = {"nvidia-persiste": "nvidia-persistenced", "nv-fabricmanage": "nv-fabricmanager",
               "nv-hostengine": "nv-hostengine"}


class HugePagePool(BaseModel):
    """Huge pages of one size on one NUMA node."""

    size_kib: int
    total: int
    free: int


class NumaNode(BaseModel):
    id: int
    cpus: list[int]
    memory_kib: int | None = None
    hugepages: list[HugePagePool] = Field(default_factory=list)

    def pool(self, size_kib: int) -> HugePagePool | None:
        return next((pool for pool in self.hugepages if pool.size_kib == size_kib), None)


class Iommu(BaseModel):
    """What Linux shows of the IOMMU: the firmware table, the units brought up, the groups."""

    acpi_table: str | None = None  # "DMAR" (Intel VT-d) or "IVRS" (AMD-Vi)
    units: list[str] = Field(default_factory=list)
    groups: int = 0

    @property
    def kind(self) -> str | None:
        return {"DMAR": "intel", "IVRS": "amd"}.get(self.acpi_table or "")

    @property
    def active(self) -> bool:
        return bool(self.units) and self.groups > 0


class VirtualFunction(BaseModel):
    index: int
    address: str


class PciDevice(BaseModel):
    """One PCI function, where it sits in the tree, and what its config space says."""

    address: str
    vendor_id: int
    device_id: int
    class_code: int  # 24 bits: base class, subclass, programming interface
    subsystem_vendor_id: int | None = None
    subsystem_device_id: int | None = None
    driver: str | None = None
    driver_override: str | None = None
    numa_node: int | None = None  # None where the kernel says -1 (no affinity known)
    iommu_group: int | None = None
    root_complex: str | None = None  # e.g. "pci0000:00"
    upstream: list[str] = Field(default_factory=list)  # bridges, root port first, parent last
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    physfn: str | None = None
    virtfns: list[VirtualFunction] = Field(default_factory=list)
    net: list[str] = Field(default_factory=list)
    bars: list[int] = Field(default_factory=list)  # sizes of BARs 0-5 in bytes (0: unused)
    caps: PcieCapabilities | None = None

    @property
    def vendor_device(self) -> str:
        return f"{self.vendor_id:04x}:{self.device_id:04x}"

    @property
    def base_class(self) -> int:
        return self.class_code >> 16

    @property
    def is_bridge(self) -> bool:
        if self.caps is not None:
            return self.caps.is_bridge
        return (self.class_code >> 8) == (PCI_CLASS_BRIDGE << 8 | PCI_SUBCLASS_PCI_BRIDGE)

    @property
    def port_type(self) -> str | None:
        return self.caps.pcie.port_type if self.caps and self.caps.pcie else None

    @property
    def is_virtual_function(self) -> bool:
        return self.physfn is not None

    @property
    def parent(self) -> str | None:
        return self.upstream[-1] if self.upstream else None


class HostFacts(BaseModel):
    """Everything vela knows about one host's hardware at one moment."""

    hostname: str = ""
    kernel: str = ""
    cpu_vendor: str = ""
    physical_address_bits: int | None = None  # what the CPU can address ("address sizes")
    cmdline: str = ""
    memory_kib: int | None = None
    default_hugepage_kib: int | None = None
    iommu: Iommu = Field(default_factory=Iommu)
    numa_nodes: list[NumaNode] = Field(default_factory=list)
    pci: dict[str, PciDevice] = Field(default_factory=dict)
    # None below: not gathered (output of an older gather.sh, or the file was unreadable).
    cpu_flags: list[str] | None = None  # the flags vela looks at: vmx, svm, hypervisor
    kvm_device: bool | None = None  # /dev/kvm exists
    lockdown: str | None = None  # kernel lockdown: "none", "integrity" or "confidentiality"
    gpu_holders: list[str] | None = None  # running daemons that keep GPUs open (GPU_HOLDERS)

    @property
    def cmdline_args(self) -> list[str]:
        return parse_cmdline(self.cmdline)

    @property
    def kernel_version(self) -> tuple[int, int] | None:
        """(major, minor) of the running kernel's release (`6.1.0-28-amd64` -> (6, 1))."""
        match = re.match(r"(\d+)\.(\d+)", self.kernel)
        return (int(match[1]), int(match[2])) if match else None

    @property
    def iommu_kind(self) -> str:
        """The IOMMU's maker, intel or amd: from the ACPI table if any, else the CPU vendor."""
        return self.iommu.kind or ("amd" if self.cpu_vendor == "AuthenticAMD" else "intel")

    def device(self, address: str) -> PciDevice:
        try:
            return self.pci[address]
        except KeyError:
            raise KeyError(f"no PCI device {address} on host {self.hostname or '?'}") from None

    def node(self, node_id: int) -> NumaNode | None:
        return next((node for node in self.numa_nodes if node.id == node_id), None)

    def upstream_switch(self, address: str) -> str | None:
        """The upstream port of the outermost PCIe switch above a device (None when the device
        hangs straight off a root port). Devices that share it share a switch: NCCL's PXB/PIX."""
        for bridge in self.device(address).upstream:
            if bridge in self.pci and self.pci[bridge].port_type == "upstream_port":
                return bridge
        return None

    def under(self, bridge: str) -> list[PciDevice]:
        """Every function below a bridge, at any depth, in address order."""
        return [dev for _, dev in sorted(self.pci.items()) if bridge in dev.upstream]

    def path_between(self, first: str, second: str) -> list[str]:
        """The bridges a peer-to-peer transfer between two functions crosses (both sides up to
        and including their lowest common bridge), in address order."""
        up_first, up_second = self.device(first).upstream, self.device(second).upstream
        common = [a for a, b in zip(up_first, up_second, strict=False) if a == b]
        lowest = common[-1:]
        return sorted(set(up_first[len(common):]) | set(up_second[len(common):]) | set(lowest))


def iommu_live(facts: HostFacts) -> bool:
    """The running kernel brought up an IOMMU: units in /sys/class/iommu and devices in
    /sys/kernel/iommu_groups. Only then can a device be bound to vfio-pci and passed through."""
    return facts.iommu.active


def iommu_requested(facts: HostFacts) -> bool:
    """The running kernel was booted to bring up the IOMMU: on Intel, `intel_iommu=on` (the last
    on/off among its options wins); on AMD, unless `amd_iommu=off` (the AMD IOMMU is on by
    default: there is no `amd_iommu=on`). `iommu=off` turns both off. A kernel built with the
    IOMMU on by default (CONFIG_INTEL_IOMMU_DEFAULT_ON) may have it live without the argument:
    `iommu_live` tells."""
    enabled = facts.iommu_kind == "amd"
    option = f"{facts.iommu_kind}_iommu"
    for key, value in cmdline_params(facts.cmdline):
        options = (value or "").split(",")
        if key == "iommu" and "off" in options:
            return False
        if key == option:
            for choice in options:
                if choice in {"on", "off"}:
                    enabled = choice == "on"
    return enabled
