"""VelaCluster's typed arguments: the inventory, the per-node shape and the cluster's policies.

Parsed by `__main__.py` from stack config (and usable directly from Python). Per-node
`overrides` are merged onto the cluster's shape and validated again, so an override can never
produce a shape the cluster-wide validation would refuse. Every error names the config key.

`mode: baremetal` means the nodes run their jobs on the host itself, with no VMs: HostTuning
leaves the GPUs on their host driver and sets ACS to 0 on the GPU-NIC paths (peer traffic
straight through the switch), which leaves no IOMMU isolation for passthrough. So on such a
node `vmsPerNode` defaults to 0 and any VM is refused, as is `hostTuning.vfio: true`.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from providers.gpu_vm.spec import Guest, Image, KernelBoot
from providers.sriov_pool.observe import paths as pool_paths
from providers.validate import interface_name, pci_address

from .inventory import NodeSpec, repeated_names

_CLUSTER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
# Keys the cluster sets for each resource from its node, its port or its VM. A pass-through
# object (hostTuning, sriovPool, gpuVm: the same for every node) that set one would point
# every node's resource at one host, or give two resources one name, PF or VM identity.
_CONNECTION = ("address", "port", "user", "hostKey")
_WHY = {**dict.fromkeys(_CONNECTION, "each node's connection comes from its entry in vela:nodes "
                                     "(or the inventory file)"),
        "name": "the cluster names each resource after its node (NODE-host, NODE-vmI)",
        "pf": "the cluster makes one pool per port of shape.nicPorts",
        "node": "the cluster sets it to the node's name (VF MACs derive from it)",
        "cluster": "the cluster sets it from vela:clusterName (VF MACs derive from it)",
        "vfs": "the cluster offers each VM the VFs of its node's pools",
        "hostShare": "the cluster gives each VM its part of the node (shape.vmsPerNode)",
        "numaNodes": "the cluster gives each VM its part of the node (shape.vmsPerNode)"}
_IDENTITY = (*_CONNECTION, "name", "pf", "node", "cluster")
RESERVED = {"hostTuning": _IDENTITY, "sriovPool": _IDENTITY,
            "gpuVm": (*_IDENTITY, "vfs", "hostShare", "numaNodes")}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


def cluster_name(value: str) -> str:
    if not isinstance(value, str) or not _CLUSTER_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid cluster name: use 1 to 31 lower-case "
                         f"letters, digits and '-', starting with a letter or digit (it names "
                         f"the cluster's resources, and its VFs' MACs derive from it)")
    return value


def port_slug(port: str) -> str:
    """A NIC port as a resource-name part: `ens1f0`, or `pci-0000-3b-00-0`."""
    slug = re.sub(r"[^a-z0-9]+", "-", port.lower()).strip("-")
    return f"pci-{slug}" if ":" in port else slug


def pool_files(port: str) -> str:
    """The systemd unit SriovPool writes for a PF: its other files (script, hook, originals)
    share the unit's stem. Asked of SriovPool itself (its paths depend on the PF alone), so
    this check follows any change in how it names them."""
    return pool_paths(SimpleNamespace(pf=port))["unit"]


def _port_name(value: str) -> str:
    """A NIC port is given as an interface name or a PCI address."""
    try:
        return pci_address(value) if ":" in value else interface_name(value)
    except ValueError as exc:
        raise ValueError(f"NIC port {value!r}: {exc}") from None


class NodeShape(_Model):
    """What each node runs. Every field can be overridden per node."""

    # Several VMs split a node by NUMA node (GpuVm hostShare): at most one per node.
    vms_per_node: int = Field(default=1, ge=0, le=16)
    gpus_per_vm: int = Field(default=8, ge=0, le=16)
    nic_ports: list[str] = Field(default_factory=list)  # PFs: interface names or PCI addresses
    vfs_per_port: int = Field(default=1, ge=0, le=256)
    vcpus: int | None = Field(default=None, ge=1, le=1024)
    memory_gib: int | None = Field(default=None, ge=1, le=65536)
    whole_nodes: bool = False
    reserved_cpus: int = Field(default=1, ge=0, le=64)
    gpu_selector: list[str] | None = None  # None: HostTuning's default (NVIDIA GPUs, NVSwitch)
    nic_selector: list[str] | None = None
    hugepages: dict[str, Any] | None = None  # HostTuning's hugepages: {total: N} or {perNode}

    @model_validator(mode="after")
    def _consistent(self) -> NodeShape:
        self.nic_ports = [_port_name(port) for port in self.nic_ports]
        if len(set(self.nic_ports)) != len(self.nic_ports):
            raise ValueError(f"nicPorts repeats a port: {self.nic_ports}")
        self._distinct_pools()
        if self.vms_per_node and not self.whole_nodes and (self.vcpus is None
                                                           or self.memory_gib is None):
            raise ValueError("give vcpus and memoryGib for each VM, or wholeNodes: true")
        return self

    def _distinct_pools(self) -> None:
        """Each port's pool needs a resource name and host files of its own: `ens1.f0` and
        `ens1-f0` would share SriovPool's files on the host, `ENS1F0` and `ens1f0` one
        resource name, and each pool would overwrite (or delete) the other's."""
        for what, name_of in (("resource name NODE-", port_slug), ("unit file ", pool_files)):
            seen: dict[str, str] = {}
            for port in self.nic_ports:
                other = seen.setdefault(name_of(port), port)
                if other != port:
                    raise ValueError(
                        f"nicPorts {other!r} and {port!r} would give their SriovPools one "
                        f"{what}{name_of(port)}, and one pool would overwrite the other: "
                        f"name each port once, by its PCI address (as `lspci -D` prints it) "
                        f"where interface names differ only in case or punctuation")


class ClusterNode(NodeSpec):
    """A node of the inventory, with what differs from the cluster's shape."""

    overrides: dict[str, Any] = Field(default_factory=dict)


class ClusterArgs(_Model):
    """Everything VelaCluster builds from."""

    name: Annotated[str, AfterValidator(cluster_name)] = "vela"
    nodes: list[ClusterNode]
    shape: NodeShape
    mode: Literal["vm", "baremetal"] = "vm"
    reboot: Literal["never", "allowed"] = "never"
    # Rolling changes: how many nodes' HostTuning may run (and reboot) at once.
    max_rebooting_nodes: int = Field(default=1, ge=1, le=100000)
    image: Image | None = None
    kernel_boot: KernelBoot | None = None
    guest: Guest = Field(default_factory=Guest)
    domain_type: Literal["kvm", "qemu"] = "kvm"
    cpu_model: str = "host-passthrough"
    network: str = "default"
    host_tuning: dict[str, Any] = Field(default_factory=dict)  # more HostTuning inputs
    sriov_pool: dict[str, Any] = Field(default_factory=dict)  # more SriovPool inputs
    gpu_vm: dict[str, Any] = Field(default_factory=dict)  # more GpuVm inputs (timeouts)
    # Provider processes to spread the nodes over (0: Pulumi's one default provider). Each
    # process runs 4 calls at once; set it when the stack is created and keep it.
    provider_shards: int = Field(default=0, ge=0, le=256)

    @field_validator("host_tuning", "sriov_pool", "gpu_vm")
    @classmethod
    def _no_identity(cls, value: dict[str, Any], info) -> dict[str, Any]:
        key = to_camel(info.field_name)
        # to_camel: `host_key` would reach the resource as hostKey (its inputs take both).
        taken = [name for name in value if to_camel(name) in RESERVED[key]]
        if taken:
            raise ValueError("; ".join(
                f"{name} cannot be set here: {_WHY[to_camel(name)]}" for name in taken)
                + f". Remove {', '.join(taken)} from vela:{key}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_vms_by_default_on_bare_metal(cls, data: Any) -> Any:
        """In baremetal mode a shape that does not say vmsPerNode has none."""
        if not isinstance(data, dict) or _host_mode(data) != "baremetal":
            return data
        shape = data.get("shape")
        if isinstance(shape, dict) and not {"vmsPerNode", "vms_per_node"} & set(shape):
            return {**data, "shape": {**shape, "vmsPerNode": 0}}
        if isinstance(shape, NodeShape) and "vms_per_node" not in shape.model_fields_set:
            return {**data, "shape": shape.model_copy(update={"vms_per_node": 0})}
        return data

    @model_validator(mode="after")
    def _nodes(self) -> ClusterArgs:
        repeated = repeated_names(self.nodes)
        if repeated:
            raise ValueError(f"nodes: node names must be unique; repeated: {repeated}")
        hosts: dict[tuple[str, int], str] = {}
        for node in self.nodes:
            first = hosts.setdefault((node.address, node.port), node.name)
            if first != node.name:
                raise ValueError(f"nodes: {first} and {node.name} have the same address and "
                                 f"port, {node.address}:{node.port}; two nodes cannot be one "
                                 f"host")
        for node in self.nodes:
            self.shape_of(node)
        self._bare_metal()
        if self.shape.vms_per_node and self.image is None and self.kernel_boot is None:
            raise ValueError("VMs need an image (a base disk on each host) or kernelBoot")
        return self

    @property
    def host_mode(self) -> str:
        """The mode every node's HostTuning gets (hostTuning.mode, when given, wins)."""
        return _host_mode(self.model_dump(by_alias=True, include={"mode", "host_tuning"}))

    def _bare_metal(self) -> None:
        if self.host_mode != "baremetal":
            return
        key = "hostTuning.mode" if "mode" in self.host_tuning else "mode"
        why = (f"{key}: baremetal runs the jobs on the hosts themselves, with no VMs (the GPUs "
               f"stay with their host driver, and ACS 0 on the GPU-NIC paths leaves no IOMMU "
               f"isolation for passthrough)")
        if self.host_tuning.get("vfio") is True:
            raise ValueError(f"hostTuning.vfio: true binds the GPUs to vfio-pci for VMs, but "
                             f"{why}: leave vfio out for bare metal, or set {key}: vm")
        with_vms = [(node.name, self.shape_of(node).vms_per_node) for node in self.nodes]
        with_vms = [(name, count) for name, count in with_vms if count]
        if not with_vms:
            return
        counts = sorted({count for _, count in with_vms})
        names = [name for name, _ in with_vms]
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ValueError(f"{why}, but vmsPerNode is {'/'.join(map(str, counts))} on {listed}: "
                         f"set vmsPerNode: 0 (in shape and in nodeOverrides), or {key}: vm to "
                         f"run VMs")

    def shape_of(self, node: ClusterNode) -> NodeShape:
        """The node's shape: the cluster's, with the node's overrides applied."""
        try:
            return NodeShape.model_validate({**self.shape.model_dump(by_alias=True),
                                             **node.overrides})
        except ValidationError as exc:
            raise ValueError(f"node {node.name}: overrides: {problems(exc)}") from None


def _host_mode(data: dict[str, Any]) -> Any:
    """The HostTuning mode of raw or dumped arguments: hostTuning.mode, else mode."""
    extra = data.get("hostTuning", data.get("host_tuning"))
    if isinstance(extra, dict) and "mode" in extra:
        return extra["mode"]
    return data.get("mode", "vm")


def problems(exc: ValidationError) -> str:
    """One line per error: the key (none for an error of the whole config), then the reason;
    never the input value."""
    return "; ".join(
        ("{}: ".format(".".join(map(str, error["loc"]))) if error["loc"] else "")
        + re.sub(r"^Value error, ", "", error["msg"]) for error in exc.errors())
