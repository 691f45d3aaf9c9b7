"""The program's two halves: stack config -> typed `ClusterArgs`, and the cluster -> exports.

Config keys (namespace `vela`): `nodes` (a list) or `inventoryFile` (what `scripts/lab up`
writes), `nodeOverrides` (node name -> shape fields), `allowEmpty`, `shape`, `mode`, `reboot`,
`maxRebootingNodes`, `image`, `kernelBoot`, `guest`, `domainType`, `cpuModel`, `network`,
`hostTuning`, `sriovPool`, `gpuVm`, `providerShards`, `clusterName`, `labHosts` (read by
`scripts/up`); the secret `sshPrivateKey` (and `sshPrivateKeyPassphrase`) reach the providers
only. Any other `vela:` key is refused, naming the closest known one: a misspelt key would
otherwise be ignored, and `vela:node` for `vela:nodes` would leave a cluster of no nodes.

A config that declares no nodes is refused unless `vela:allowEmpty` is true: deploying it would
delete every VM with its disk and revert every host. `pulumi destroy` needs no valid config:
the engine does not run the program to destroy (pkg/engine/destroy.go, newDestroySource: a
NullSource, unless --run-program is given).
"""

from __future__ import annotations

import difflib
import gc
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime.config

from providers.errors import ClientKeyError
from providers.host.keys import SecretKey, encrypted_key, looks_private

from .cluster import VelaCluster
from .cluster_spec import ClusterArgs, ClusterNode, cluster_name
from .inventory import InventoryError, json_type, load_inventory_file, parse_nodes

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "vela"
# Config key -> ClusterArgs field (camelCase alias).
OBJECT_KEYS = ["shape", "image", "kernelBoot", "guest", "hostTuning", "sriovPool", "gpuVm"]
TEXT_KEYS = ["mode", "reboot", "domainType", "cpuModel", "network"]
NUMBER_KEYS = ["maxRebootingNodes", "providerShards"]
NODE_KEYS = ["nodes", "inventoryFile", "nodeOverrides", "allowEmpty"]
OTHER_KEYS = ["clusterName", "labHosts"]  # labHosts: how many lab hosts scripts/up starts
SECRET_KEYS = ["sshPrivateKey", "sshPrivateKeyPassphrase"]
KNOWN_KEYS = [*NODE_KEYS, *OBJECT_KEYS, *TEXT_KEYS, *NUMBER_KEYS, *OTHER_KEYS, *SECRET_KEYS]
# Pulumi numbers are doubles: a larger integer would silently change on its way to a provider.
LARGEST_INTEGER = 2**53
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")


class ConfigError(ValueError):
    """Stack config is invalid; the message names the key and says what to fix."""


def main() -> VelaCluster:
    """The program, as `__main__.py` and the inline runner (`components.runner`) run it."""
    try:
        cluster_args, provider_config = read_config(pulumi.Config(NAMESPACE))
    except ConfigError as error:
        # RunError shows the message alone, without a Python traceback.
        raise pulumi.RunError(str(error)) from None
    return declare(cluster_args, provider_config)


def read_config(config: pulumi.Config) -> tuple[ClusterArgs, dict[str, Any]]:
    """Validated cluster arguments, and the provider configuration (secret outputs)."""
    _refuse_unknown_keys()
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
            raw[key] = _whole_number(config, key)
    if config.get("labHosts") is not None and _whole_number(config, "labHosts") < 1:
        raise ConfigError("vela:labHosts must be at least 1: the number of lab hosts scripts/up "
                          "starts (remove it to target real hosts)")
    raw["name"] = _cluster_name(config)
    try:
        args = ClusterArgs.model_validate(raw)
    except ValueError as exc:  # pydantic's ValidationError (a ValueError): bad values, shapes
        raise ConfigError(_config_problems(exc)) from None
    return args, _secrets(config)


# -- keys ----------------------------------------------------------------------------------------

def _refuse_unknown_keys() -> None:
    """Every `vela:` key must be one vela reads. The SDK keeps the stack's whole config where
    `pulumi.Config.get` reads it (runtime.config: CONFIG, filled by set_all_config from the
    engine's RunRequest or the language host's PULUMI_CONFIG), with no public way to list it."""
    keys = set(pulumi.runtime.config.CONFIG.get()) | set(pulumi.runtime.get_config_env())
    unknown = sorted(key.partition(":")[2] for key in keys
                     if key.partition(":")[0] == NAMESPACE
                     and key.partition(":")[2] not in KNOWN_KEYS)
    if unknown:
        raise ConfigError("unknown stack config: " + "; ".join(map(_unknown_key, unknown))
                          + ". vela refuses a key it does not read rather than ignore it (a "
                          "misspelt vela:nodes would leave a cluster of no nodes): remove it "
                          "with `pulumi config rm KEY`")


def _unknown_key(name: str) -> str:
    head = re.split(r"[.\[]", name, maxsplit=1)[0]
    if head != name and head in KNOWN_KEYS:
        return (f"vela:{name} is a key of its own, not a field of vela:{head}: set fields "
                f"with `pulumi config set --path 'vela:{name}' VALUE`")
    by_lower = {key.lower(): key for key in KNOWN_KEYS}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f"vela:{name} is not a vela setting (did you mean vela:{by_lower[close[0]]}?)"
    return (f"vela:{name} is not a vela setting (vela reads "
            f"{', '.join(f'vela:{key}' for key in KNOWN_KEYS)})")


# -- nodes ---------------------------------------------------------------------------------------

def _nodes(config: pulumi.Config) -> list[dict[str, Any]]:
    """The nodes with their overrides merged; none only when vela:allowEmpty says so."""
    inventory_file = config.get("inventoryFile")
    if inventory_file is not None and config.get("nodes") is not None:
        raise ConfigError("vela:nodes and vela:inventoryFile are both set: give one (the nodes "
                          "of an inventory file would replace vela:nodes)")
    if inventory_file is not None:
        if not inventory_file.strip():
            raise ConfigError("vela:inventoryFile is empty: give the inventory file's path "
                              "(relative to the project), or remove the key")
        path = PROJECT_ROOT / inventory_file
        nodes = load_inventory_file(path)
        source = f"the inventory file {path} lists no hosts"
    elif config.get("nodes") is not None:
        nodes = parse_nodes(_object(config, "nodes"), model=ClusterNode)
        source = "vela:nodes is an empty list"
    else:
        nodes = []
        source = "neither vela:nodes nor vela:inventoryFile is set"
    if not nodes and not _flag(config, "allowEmpty"):
        raise ConfigError(
            f"{source}, so this config declares a cluster of no nodes: deploying it would "
            f"delete every VM of this stack with its disk, every VF pool, and revert every "
            f"host's tuning. To remove everything, run `pulumi destroy`; to deploy an empty "
            f"cluster on purpose, run `pulumi config set vela:allowEmpty true`")
    entries = [node.model_dump(by_alias=True) for node in nodes]
    overrides = _object(config, "nodeOverrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"vela:nodeOverrides must map node names to shape fields, such as "
                          f"{{\"hgx-01\": {{\"vmsPerNode\": 2}}}}; got {json_type(overrides)}")
    for name, fields in overrides.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"vela:nodeOverrides.{name} must be an object of shape fields, "
                              f"such as {{\"vmsPerNode\": 2}}; got {json_type(fields)}")
    names = {entry.get("name") for entry in entries}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"vela:nodeOverrides names nodes not in the inventory: {unknown}")
    return [{**entry, "overrides": {**entry.get("overrides", {}),
                                    **overrides.get(entry["name"], {})}} for entry in entries]


def _cluster_name(config: pulumi.Config) -> str:
    """vela:clusterName, else the stack's name, which must then make a valid cluster name."""
    name = config.get("clusterName")
    if name is not None:
        return name
    stack = pulumi.get_stack()
    try:
        return cluster_name(stack)
    except ValueError as exc:
        raise ConfigError(f"the cluster is named after the stack unless vela:clusterName is "
                          f"set, and {exc}: set vela:clusterName") from None


# -- values --------------------------------------------------------------------------------------

def _object(config: pulumi.Config, key: str) -> Any:
    """A JSON value (`pulumi config set --path` and YAML objects arrive as JSON text), with
    numbers that survive the trip to a provider: finite, and integers a double holds exactly."""
    text = config.get(key)
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite,
                          parse_int=_exact)
    except _NotANumber as exc:
        raise ConfigError(f"vela:{key}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"vela:{key} is not valid JSON ({exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}): set it with `pulumi config set --path` or as "
                          f"a YAML object in the stack file") from None


class _NotANumber(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _NotANumber(f"{name} is not a number a setting can have: give a finite number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotANumber(f"{text} is too large to be a number (the largest is about 1.8e308)")
    return number


def _exact(text: str) -> int:
    number = int(text)
    if abs(number) > LARGEST_INTEGER:
        raise _NotANumber(f"{text} is too large: Pulumi passes numbers as doubles, which hold "
                          f"whole numbers up to 2^53 ({LARGEST_INTEGER}) exactly")
    return number


def _whole_number(config: pulumi.Config, key: str) -> int:
    """A whole number: "2" or "2.0", never "2.5" silently made 2."""
    text = config.get(key).strip()
    if _INTEGER.match(text):
        return int(text)
    if not _DECIMAL.match(text):
        raise ConfigError(f"vela:{key} must be a whole number, got {_shown(text)}")
    number = float(text)
    if not math.isfinite(number):
        raise ConfigError(f"vela:{key} must be a whole number, got {text}, which is too large")
    if not number.is_integer():
        raise ConfigError(f"vela:{key} must be a whole number, got {text}: vela does not round "
                          f"it, give {math.floor(number)} or {math.ceil(number)}")
    return int(number)


def _flag(config: pulumi.Config, key: str) -> bool:
    text = config.get(key)
    if text is None:
        return False
    if text.strip().lower() not in {"true", "false"}:
        raise ConfigError(f"vela:{key} must be true or false, got {_shown(text)}")
    return text.strip().lower() == "true"


def _shown(text: str) -> str:
    """A config value fit for a message: never a private key pasted in the wrong place."""
    if looks_private(text):
        return "a private key (not repeated here; remove it from the stack config)"
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _config_problems(exc: Exception) -> str:
    """pydantic's errors, each with the config key it is about (`vela:shape.vcpus`,
    `vela:nodes[0].overrides`) and the reason, never the value."""
    if not hasattr(exc, "errors"):
        return f"invalid stack config: {exc}"
    lines = []
    for error in exc.errors():
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                        for part in error["loc"])
        reason = re.sub(r"^Value error, ", "", error["msg"])
        lines.append(f"vela:{where[1:]}: {reason}" if where else reason)
    return "invalid stack config: " + "; ".join(lines)


# -- secrets -------------------------------------------------------------------------------------

def _secrets(config: pulumi.Config) -> dict[str, Any]:
    """The provider configuration: the SSH key and its passphrase, as secret outputs.

    Each must be a secret in the stack config. The engine hands dynamic providers the whole
    stack config, marking secret only the keys that are secure there (pkg/resource/deploy
    target.go, GetPackageConfig: `WithSecret(c.Secure())`), and stores it as the default
    provider's inputs: a key set without --secret would land in the state in plain text. The
    SDK tells which keys are secure from the list the engine sends with the config
    (RunRequest.configSecretKeys, or PULUMI_CONFIG_SECRET_KEYS for the language host), through
    `pulumi.runtime.is_config_secret`; `Config.get_secret` only wraps whatever value it finds.
    So preview warns, and an update (which would write the state) refuses. The program cannot
    keep it out of the backend's update history: the CLI records the stack config there for
    every update (`pulumi up`, not preview), before and whatever the program does.
    """
    found = {}
    for key in SECRET_KEYS:
        if config.get(key) is None:
            continue
        full = f"{NAMESPACE}:{key}"
        if not pulumi.runtime.is_config_secret(full):
            message = (f"{full} is not a secret: it is stored in plain text in the stack file "
                       f"(Pulumi.{pulumi.get_stack()}.yaml), and the engine would copy it in "
                       f"plain text into the state, so `pulumi up` refuses it (an update run "
                       f"with it records it in the backend's update history all the same). Set "
                       f"it as a secret: `pulumi config set --secret {full}"
                       + (" < ~/.ssh/id_ed25519`" if key == "sshPrivateKey" else "`")
                       + ", and replace the key if the stack file or the backend is shared")
            if not pulumi.runtime.is_dry_run():
                raise ConfigError(message)
            pulumi.log.warn(message)
        found[full] = config.get_secret(key)
    _check_private_key(config.get("sshPrivateKey"), config.get("sshPrivateKeyPassphrase"))
    return found


def _check_private_key(text: str | None, passphrase: str | None) -> None:
    """The key is read at preview, where its format can be read: a public key in its place, a
    missing or wrong passphrase fail here rather than at the first host. A text whose format
    is not OpenSSH or PEM is left to the provider, which says why it cannot load it."""
    if text is None:
        return
    try:
        key = SecretKey(text, passphrase)
        if encrypted_key(text) is not None:
            key.load()
    except ClientKeyError as exc:
        raise ConfigError(f"vela:sshPrivateKey: {exc}") from None


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
