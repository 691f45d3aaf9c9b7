"""The program's two halves: stack config -> typed `ClusterArgs`, and the cluster -> exports.

Config keys (namespace `vela`): `nodes` (a list) or `inventoryFile` (what `scripts/lab up`
writes), `nodeOverrides` (node name -> shape fields), `shape`, `mode`, `reboot`,
`maxRebootingNodes`, `image`, `kernelBoot`, `guest`, `domainType`, `cpuModel`, `network`,
`hostTuning`, `sriovPool`, `gpuVm`, `providerShards`, `clusterName`; the secret `sshPrivateKey` (and
`sshPrivateKeyPassphrase`) reach the providers only.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pulumi

from .cluster import VelaCluster
from .cluster_spec import ClusterArgs, ClusterNode, problems
from .inventory import InventoryError, load_inventory_file, parse_nodes

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Config key -> ClusterArgs field (camelCase alias).
OBJECT_KEYS = ["shape", "image", "kernelBoot", "guest", "hostTuning", "sriovPool", "gpuVm"]
TEXT_KEYS = ["mode", "reboot", "domainType", "cpuModel", "network"]
NUMBER_KEYS = ["maxRebootingNodes", "providerShards"]
SECRET_KEYS = ["sshPrivateKey", "sshPrivateKeyPassphrase"]


class ConfigError(ValueError):
    """Stack config is invalid; the message names the key and says what to fix."""


def main() -> VelaCluster:
    """The program, as `__main__.py` and the inline runner (`components.runner`) run it."""
    try:
        cluster_args, provider_config = read_config(pulumi.Config("vela"))
    except ConfigError as error:
        # RunError shows the message alone, without a Python traceback.
        raise pulumi.RunError(str(error)) from None
    return declare(cluster_args, provider_config)


def read_config(config: pulumi.Config) -> tuple[ClusterArgs, dict[str, Any]]:
    """Validated cluster arguments, and the provider configuration (secret outputs)."""
    try:
        nodes = _nodes(config)
    except InventoryError as error:
        raise ConfigError(str(error)) from None
    raw: dict[str, Any] = {"nodes": nodes, "shape": {}}
    for key in OBJECT_KEYS:
        value = _object(config, key)
        if value is not None:
            raw[key] = value
    for key in TEXT_KEYS:
        if config.get(key) is not None:
            raw[key] = config.get(key)
    for key in NUMBER_KEYS:
        if config.get(key) is not None:
            raw[key] = _number(config, key)
    raw["name"] = config.get("clusterName") or pulumi.get_stack()
    try:
        args = ClusterArgs.model_validate(raw)
    except ValueError as exc:  # pydantic's ValidationError (a ValueError): bad values, shapes
        raise ConfigError(_config_problems(exc)) from None
    secrets = {f"vela:{key}": config.get_secret(key) for key in SECRET_KEYS
               if config.get(key) is not None}
    return args, secrets


def _nodes(config: pulumi.Config) -> list[dict[str, Any]]:
    inventory_file = config.get("inventoryFile")
    if inventory_file:
        nodes = load_inventory_file(PROJECT_ROOT / inventory_file)
    else:
        nodes = parse_nodes(_object(config, "nodes") or [], model=ClusterNode)
    entries = [node.model_dump(by_alias=True) for node in nodes]
    overrides = _object(config, "nodeOverrides") or {}
    if not isinstance(overrides, dict):
        raise InventoryError("vela:nodeOverrides must map node names to shape fields")
    names = {entry.get("name") for entry in entries}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InventoryError(f"vela:nodeOverrides names nodes not in the inventory: {unknown}")
    return [{**entry, "overrides": {**entry.get("overrides", {}),
                                    **overrides.get(entry["name"], {})}} for entry in entries]


def _object(config: pulumi.Config, key: str) -> Any:
    try:
        return config.get_object(key)
    except Exception:  # noqa: BLE001 - pulumi raises its own type for bad JSON
        raise ConfigError(f"vela:{key} is not valid JSON: set it with "
                          f"`pulumi config set --path` or as a YAML object") from None


def _number(config: pulumi.Config, key: str) -> int:
    text = config.get(key)
    try:
        return int(float(text))
    except ValueError:
        raise ConfigError(f"vela:{key} must be a whole number, got {text!r}") from None


def _config_problems(exc: Exception) -> str:
    text = problems(exc) if hasattr(exc, "errors") else str(exc)
    return f"invalid stack config: {text}"


# -- exports -----------------------------------------------------------------------------------

def declare(args: ClusterArgs, provider_config: dict[str, Any]) -> VelaCluster:
    """The cluster and the stack's exports."""
    with _collector_paused():
        cluster = VelaCluster(args.name, args, provider_config=provider_config)
        vm_names = list(cluster.vms)
        addresses = pulumi.Output.all(*[vm.addresses for vm in cluster.vms.values()]).apply(
            lambda lists: dict(zip(vm_names, [list(a or []) for a in lists], strict=True)))
        pulumi.export("vmAddresses", addresses)
        pulumi.export("hostfile", addresses.apply(lambda by_vm: hostfile(by_vm, args)))
        # One NCCL environment per VM: NIC names and topology file differ from VM to VM.
        environments = pulumi.Output.all(*[vm.ncclEnvironment for vm in cluster.vms.values()])
        pulumi.export("ncclEnvironment", environments.apply(
            lambda found: dict(zip(vm_names, found, strict=True))))
        nvlink = pulumi.Output.all(*[vm.nvlink for vm in cluster.vms.values()])
        pulumi.export("nvlink", nvlink.apply(lambda found: dict(zip(vm_names, found,
                                                                    strict=True))))
        pulumi.export("summary", summary(args))
    return cluster


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Declare with Python's cyclic GC off, then freeze the heap (`gc.freeze`) and turn it on.

    Declaring is synchronous: no RegisterResource is sent until the program returns to the
    event loop, so everything the SDK allocates meanwhile stays alive (per input property of
    every resource: four futures, a resolver, an Output with its task and context; about 2,400
    tracked objects per node), and much of it lives as long as the resources, i.e. until the
    program exits. CPython's full collection walks the whole heap each time it has grown by a
    quarter, so with the collector on, GC took more than half of running the program for 1,000
    nodes and its share grew with the cluster (13 s at 1,000 nodes, 33 s at 2,000). Frozen
    objects are still freed by reference counting; only cycles among them stay until the
    process exits (a few dozen objects per node): the language host's process exits after the
    deployment, and the inline runner's after its one or two runs. A failed declaration turns
    the collector back on and freezes nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()  # before turning it on: a young collection would otherwise walk all of it
    finally:
        if enabled:
            gc.enable()


def hostfile(addresses: dict[str, list[str]], args: ClusterArgs) -> str:
    """An MPI hostfile: one line per VM, slots = its GPUs (one rank per GPU)."""
    slots = {f"{node.name}-vm{i}": args.shape_of(node).gpus_per_vm
             for node in args.nodes for i in range(args.shape_of(node).vms_per_node)}
    return "".join(f"{found[0]} slots={slots.get(name, 1)}\n"
                   for name, found in addresses.items() if found)


def summary(args: ClusterArgs) -> dict[str, Any]:
    shapes = [args.shape_of(node) for node in args.nodes]
    return {"name": args.name, "mode": args.mode, "nodes": len(args.nodes),
            "vms": sum(shape.vms_per_node for shape in shapes),
            "gpus": sum(shape.vms_per_node * shape.gpus_per_vm for shape in shapes),
            "vfs": sum(shape.vfs_per_port * len(shape.nic_ports) for shape in shapes),
            "reboot": args.reboot, "maxRebootingNodes": args.max_rebooting_nodes}
