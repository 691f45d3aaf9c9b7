"""A deployed stack, as the acceptance benchmark sees it: its machines and how to reach them.

`read_stack` reads the stack's outputs and config through the Automation API
(components/deployed.py: `read_deployed`, shared with `python -m topology --stack`);
`stack_info` turns them into machines, and is pure.
VMs come from the outputs (`vmAddresses`, `hostfile`, `ncclEnvironment`) and log in as the
guest user of `vela:guest`; hosts (the bare-metal baseline) come from `vela:nodes` or the lab's
`vela:inventoryFile`. Each VM's host is its hypervisor: the guest's SSH host keys are read from
its console log there (acceptance/hostkeys.py), and on the lab, or with `jump`, the VM is
reached through it (its address is on the host's own network). A VM benchmarks over its
NCCL_SOCKET_IFNAME, a host over its first NIC port (`vela:shape.nicPorts`); a test network
brings all of a host's ports up, for its VMs' VFs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.deployed import config_json, is_vm_of, read_deployed, stack_nodes
from providers.gpu_vm.observe import console_log

from .plan import Machine


@dataclass(frozen=True)
class StackInfo:
    name: str
    vms: list[Machine]
    hosts: list[Machine]
    hostfile: str
    lab: bool  # vela:labHosts is set: the lab, with no GPUs


def stack_info(name: str, outputs: dict[str, Any], config: dict[str, str], *,
               jump: bool = False) -> StackInfo:
    """`outputs`: output name -> value; `config`: "vela:key" -> its value as the CLI stores it
    (objects as JSON text). `jump`: reach the VMs through their hosts (always on the lab)."""
    addresses = outputs.get("vmAddresses")
    if not isinstance(addresses, dict):
        raise ValueError(f"stack {name} has no vmAddresses output: deploy it first "
                         f"(`scripts/up`), or name the stack that is deployed (--stack)")
    guest = config_json(config.get("vela:guest"), "vela:guest") or {}
    user = guest.get("user", "vela")
    slots = _slots(outputs.get("hostfile", ""))
    environments = outputs.get("ncclEnvironment") or {}
    hosts = _hosts(config)
    lab = "vela:labHosts" in config
    vms = []
    for vm, found in addresses.items():
        if not found:
            raise ValueError(f"VM {vm} has no address yet (no DHCP lease): wait for it to boot, "
                             f"then `pulumi refresh`, or check its console log on its host")
        environment = dict(environments.get(vm) or {})
        host = _hypervisor(vm, hosts)
        vms.append(Machine(name=vm, address=found[0], user=user, slots=slots.get(found[0], 1),
                           environment=environment,
                           interface=_socket_interface(environment),
                           hypervisor=host, console_log=console_log(vm),
                           jump=host is not None and (jump or lab)))
    return StackInfo(name=name, vms=vms, hosts=hosts, lab=lab,
                     hostfile=outputs.get("hostfile", ""))


def _hypervisor(vm: str, hosts: list[Machine]) -> Machine | None:
    """The host a VM runs on (its node, by VelaCluster's naming)."""
    return next((host for host in hosts if is_vm_of(vm, host.name)), None)


def _socket_interface(environment: dict[str, str]) -> str:
    """The first interface NCCL_SOCKET_IFNAME names ('=' asks NCCL for an exact match, '^'
    excludes: no interface to take)."""
    value = environment.get("NCCL_SOCKET_IFNAME", "")
    if value.startswith("^"):
        return ""
    return value.lstrip("=").split(",")[0]


def _slots(hostfile: str) -> dict[str, int]:
    slots = {}
    for line in hostfile.splitlines():
        fields = line.split()
        if fields:
            count = next((f.split("=", 1)[1] for f in fields[1:] if f.startswith("slots=")), "1")
            slots[fields[0]] = int(count)
    return slots


def _hosts(config: dict[str, str]) -> list[Machine]:
    shape = config_json(config.get("vela:shape"), "vela:shape") or {}
    ports = shape.get("nicPorts") or []
    return [Machine(name=node.name, address=node.address, user=node.user, port=node.port,
                    host_keys=(node.host_key,), interface=ports[0] if ports else "",
                    ports=tuple(ports))
            for node in stack_nodes(config)]


def read_stack(name: str, *, jump: bool = False) -> StackInfo:  # pragma: no cover - deployed
    deployed = read_deployed(name)
    return stack_info(name, deployed.outputs, deployed.config, jump=jump)
