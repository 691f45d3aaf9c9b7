"""VelaCluster: the whole cluster as one ComponentResource (`vela:index:VelaCluster`).

Per node, in dependency order: HostTuning, then one SriovPool per NIC port, then the node's
GpuVms. Resource names derive from the node's name only (`NODE-host`, `NODE-PORT`,
`NODE-vmI`), so adding a node never touches the others and removing one deletes only its
resources (the engine deletes dependents first: VMs, then pools, then the host tuning).

Rolling changes: with reboots allowed, node k's HostTuning waits for node k-N's whole stack
(N = maxRebootingNodes), so at most N nodes reboot at once.

Provider shards: Pulumi runs every dynamic resource through one provider process that serves
4 calls at once. With `providerShards: S`, the nodes are spread over S explicit provider
instances by a stable hash of their names (each a process of its own), so a large cluster's
reboots and VM boots do not wait in one line of 4.
"""

from __future__ import annotations

import zlib
from typing import Any

import pulumi

from providers.gpu_vm import GpuVm
from providers.host_tuning import HostTuning
from providers.sriov_pool import SriovPool

# port_slug lives with the shape, whose validation refuses two ports with one pool name.
from .cluster_spec import ClusterArgs, ClusterNode, NodeShape, port_slug

DYNAMIC_PACKAGE = "pulumi-python"


class NodeResources:
    """What VelaCluster declared for one node."""

    def __init__(self, host: HostTuning, pools: list[SriovPool], vms: dict[str, GpuVm]) -> None:
        self.host, self.pools, self.vms = host, pools, vms  # vms: VM name -> resource

    @property
    def last(self) -> list[pulumi.Resource]:
        """What a later node's rolling change waits for: everything of this node."""
        return [self.host, *self.pools, *self.vms.values()]


class VelaCluster(pulumi.ComponentResource):
    """The cluster. `nodes` maps node name -> NodeResources; outputs are per-VM facts."""

    def __init__(self, name: str, args: ClusterArgs, *,
                 provider_config: dict[str, Any] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("vela:index:VelaCluster", name, None, opts)
        self.args = args
        self._shard_providers = self._shards(name, provider_config or {})
        self.nodes: dict[str, NodeResources] = {}
        for index, node in enumerate(args.nodes):
            wait_for = []
            if args.reboot == "allowed" and index >= args.max_rebooting_nodes:
                wait_for = self.nodes[args.nodes[index - args.max_rebooting_nodes].name].last
            self.nodes[node.name] = self._node(node, args.shape_of(node), wait_for)
        self.vms = {name: vm for resources in self.nodes.values()
                    for name, vm in resources.vms.items()}
        self.register_outputs({"vms": {name: vm.urn for name, vm in self.vms.items()}})

    # -- providers ---------------------------------------------------------------------------

    def _shards(self, name: str, config: dict[str, Any]) -> list[pulumi.ProviderResource]:
        # The provider's config carries the SSH key (secret, so encrypted in state): an
        # explicit provider is configured with its own inputs, not the stack's config.
        return [pulumi.ProviderResource(DYNAMIC_PACKAGE, f"{name}-shard{shard}", dict(config),
                                        pulumi.ResourceOptions(parent=self))
                for shard in range(self.args.provider_shards)]

    def provider_for(self, node: str) -> pulumi.ProviderResource | None:
        if not self._shard_providers:
            return None
        return self._shard_providers[zlib.crc32(node.encode()) % len(self._shard_providers)]

    # -- one node ----------------------------------------------------------------------------

    def _node(self, node: ClusterNode, shape: NodeShape,
              wait_for: list[pulumi.Resource]) -> NodeResources:
        args = self.args
        connection = {"address": node.address, "port": node.port, "user": node.user,
                      "hostKey": node.host_key}
        provider = self.provider_for(node.name)
        host = HostTuning(f"{node.name}-host", {**connection, **host_tuning_inputs(args, shape)},
                          self._opts(provider, depends_on=wait_for))
        # No VM on a bare-metal node to take the VFs: they stay on the NIC's own VF driver.
        driver = {"driver": "host"} if args.host_mode == "baremetal" else {}
        pools = [SriovPool(f"{node.name}-{port_slug(port)}",
                           {**connection, "pf": port, "numVfs": shape.vfs_per_port,
                            "mode": args.mode, "cluster": args.name, "node": node.name,
                            **driver, **args.sriov_pool},
                           self._opts(provider, depends_on=[host]))
                 for port in shape.nic_ports]
        vms = {}
        # Every VM is offered every VF of the node; with several VMs each takes its part of
        # the host (hostShare: a socket each on a 2-socket node) and the VFs on it.
        vfs = pulumi.Output.all(*[pool.vfs for pool in pools]).apply(
            lambda lists: [vf for vfs in lists for vf in (vfs or [])])
        for index in range(shape.vms_per_node):
            vm_name = f"{node.name}-vm{index}"
            share = {"hostShare": {"index": index, "count": shape.vms_per_node}} \
                if shape.vms_per_node > 1 else {}
            vms[vm_name] = GpuVm(vm_name, {**connection, **vm_inputs(args, shape, vm_name),
                                           **share, "vfs": vfs},
                                 self._opts(provider, depends_on=[host, *pools],
                                            delete_before_replace=True))
        return NodeResources(host, pools, vms)

    def _opts(self, provider, **options) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, provider=provider, **options)


def host_tuning_inputs(args: ClusterArgs, shape: NodeShape) -> dict[str, Any]:
    return {"mode": args.mode, "reboot": args.reboot, **args.host_tuning,
            **_given(gpuSelector=shape.gpu_selector, nicSelector=shape.nic_selector,
                     hugepages=shape.hugepages)}


def vm_inputs(args: ClusterArgs, shape: NodeShape, name: str) -> dict[str, Any]:
    return {"name": name, "gpus": shape.gpus_per_vm, "wholeNodes": shape.whole_nodes,
            "reservedCpus": shape.reserved_cpus, "domainType": args.domain_type,
            "cpuModel": args.cpu_model, "network": args.network,
            "guest": args.guest.model_dump(by_alias=True), **args.gpu_vm,
            **_given(vcpus=shape.vcpus, memoryGib=shape.memory_gib,
                     gpuSelector=shape.gpu_selector,
                     image=args.image and args.image.model_dump(by_alias=True),
                     kernelBoot=args.kernel_boot and args.kernel_boot.model_dump(by_alias=True))}


def _given(**values: Any) -> dict[str, Any]:
    """The values that are set: Pulumi drops nulls, and a resource's default applies."""
    return {key: value for key, value in values.items() if value is not None}
