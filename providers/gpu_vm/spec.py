"""GpuVm's inputs: one KVM guest with passed-through GPUs and VFs, mirroring its host.

Keys are camelCase. GPUs are a count (chosen by the placement policy, NUMA- and switch-aware)
or addresses; VFs come from a SriovPool's `vfs` output. The guest boots a disk image (a cloud
image, copied on write) or, for the lab, a kernel and an initramfs; either way it gets a
cloud-init NoCloud seed carrying the user, keys and the recipe's guest tuning.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ..common.inputs import Inputs
from ..common.selectors import DeviceSelector
from ..host.keys import parse_public_key
from ..host.target import SshTarget
from ..validate import absolute_path, pci_address, user_name

_DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CMDLINE = re.compile(r"^[A-Za-z0-9 =,._:/-]{0,1000}$")


def _domain_name(value: str) -> str:
    if not _DOMAIN_NAME.match(value):
        raise ValueError(f"{value!r}: a domain name is lower-case letters, digits and '-' "
                         f"(at most 63), starting with a letter or digit")
    return value


def _ssh_key(value: str) -> str:
    parse_public_key(value)
    if "\n" in value:
        raise ValueError("one SSH public key per entry, on one line")
    return value.strip()


def _path(value: str) -> str:
    return absolute_path(value, "path on the host")


HostPath = Annotated[str, AfterValidator(_path)]
DomainName = Annotated[str, AfterValidator(_domain_name)]
SshPublicKey = Annotated[str, AfterValidator(_ssh_key)]
Address = Annotated[str, AfterValidator(pci_address)]


class VfRef(Inputs):
    """A VF as SriovPool reports it (its `vfs` output); only the address is required."""

    model_config = ConfigDict(extra="ignore")
    address: Address
    mac: str | None = None


class Image(Inputs):
    """A base disk image already on the host (qcow2 or raw), copied on write per guest."""

    path: HostPath
    size_gib: int = Field(default=32, ge=1, le=65536)


class KernelBoot(Inputs):
    """Boot a kernel and an initramfs directly (the lab's minimal guests)."""

    kernel: HostPath
    initrd: HostPath
    cmdline: str = "console=ttyS0"

    @field_validator("cmdline")
    @classmethod
    def _cmdline(cls, value: str) -> str:
        if not _CMDLINE.match(value):
            raise ValueError("the kernel command line may use letters, digits, spaces and "
                             "=,._:/- only")
        return value


class Guest(Inputs):
    """First-boot configuration: who can log in, and the recipe's guest OS tuning."""

    user: str = "vela"
    ssh_keys: list[SshPublicKey] = Field(default_factory=list)
    tuning: bool = True
    mtu: int = Field(default=9000, ge=1280, le=9216)
    # NCCL_IB_GID_INDEX for RoCE VFs: 3 is RoCE v2 over IPv4 in a ConnectX's default GID table;
    # null leaves it to NCCL (2.21 and later pick a RoCE v2 GID themselves).
    ib_gid_index: int | None = Field(default=3, ge=0, le=255)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        return user_name(value)


class HostShare(Inputs):
    """This guest's part of the host when several VMs share it: the host's NUMA nodes split
    into `count` equal consecutive groups, the guest taking group `index` (on a 2-socket host,
    `count: 2` gives each VM a socket). `vfs` then lists the VFs the guest may take: it takes
    those on its nodes and leaves the others to the VMs of the other parts."""

    index: int = Field(ge=0, le=63)
    count: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _within(self) -> HostShare:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} is not below count {self.count} "
                             f"(parts are numbered from 0)")
        return self


class GpuVmArgs(SshTarget):
    name: DomainName
    vcpus: int | None = Field(default=None, ge=1, le=1024)
    memory_gib: int | None = Field(default=None, ge=1, le=16384)
    whole_nodes: bool = False  # every CPU and free huge page of the NUMA nodes it uses
    reserved_cpus: int = Field(default=1, ge=0, le=64)  # per node, for emulator and I/O
    gpus: Annotated[int, Field(ge=0, le=64)] | list[Address] = 0
    gpu_selector: list[DeviceSelector] = Field(default_factory=lambda: ["nvidia-gpu"])
    vfs: list[VfRef] = Field(default_factory=list)
    # Where on the host: every NUMA node (default), these nodes, or a part of the host.
    numa_nodes: list[Annotated[int, Field(ge=0, le=1023)]] | None = None
    host_share: HostShare | None = None
    # On an NVSwitch node, a guest with only some GPUs has no NVLink: refused unless allowed.
    allow_no_nvlink: bool = False
    image: Image | None = None
    kernel_boot: KernelBoot | None = None
    firmware: Literal["bios", "efi"] = "bios"
    guest: Guest = Field(default_factory=Guest)
    domain_type: Literal["kvm", "qemu"] = "kvm"
    cpu_model: str = "host-passthrough"  # or a named model (qemu domains): qemu64, EPYC, ...
    hugepages: bool = True  # 1 GiB pages per guest NUMA cell
    network: str = "default"  # the libvirt network of the management interface
    start: bool = True
    wait_timeout: int = Field(default=600, ge=10, le=7200)  # boot until the guest has an address
    # false: started, not waited for (a guest with static addressing, or one whose boot should
    # not hold `pulumi up`: libvirt provider's wait_for_lease); its addresses come with refresh.
    wait_for_address: bool = True
    # A graceful shutdown's deadline (then power off): a guest that ignores ACPI costs no more.
    shutdown_timeout: int = Field(default=120, ge=0, le=3600)

    @field_validator("cpu_model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not _CPU_MODEL.match(value):
            raise ValueError(f"{value!r} is not a CPU model name")
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        return _domain_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> GpuVmArgs:
        if (self.image is None) == (self.kernel_boot is None):
            raise ValueError("give either image (a disk image on the host) or kernelBoot "
                             "(kernel and initrd), not both or neither")
        if not self.whole_nodes and (self.vcpus is None or self.memory_gib is None):
            raise ValueError("give vcpus and memoryGib, or wholeNodes: true")
        if self.domain_type == "qemu" and self.cpu_model == "host-passthrough":
            raise ValueError("qemu (TCG) domains cannot pass the host CPU through: name a CPU "
                             "model, for example cpuModel: qemu64")
        if isinstance(self.gpus, list) and len(set(self.gpus)) != len(self.gpus):
            raise ValueError("a GPU address is listed twice")
        if self.numa_nodes is not None and self.host_share is not None:
            raise ValueError("give numaNodes or hostShare, not both")
        if self.numa_nodes is not None and (not self.numa_nodes or
                                            len(set(self.numa_nodes)) != len(self.numa_nodes)):
            raise ValueError("numaNodes lists each host NUMA node once, and at least one")
        addresses = [vf.address for vf in self.vfs]
        if len(set(addresses)) != len(addresses):
            raise ValueError("a VF is listed twice")
        return self

    @property
    def gpu_count(self) -> int:
        return len(self.gpus) if isinstance(self.gpus, list) else self.gpus
