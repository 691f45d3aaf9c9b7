"""What `python -m topology --stack NAME` draws: one picture per node of a deployed stack.

`stack_nodes_to_draw` is pure: from the stack's outputs and config (components/deployed.py
reads them, as for the acceptance benchmark) it lists each node with how to reach it (address,
port, user, pinned host key, as the providers connect), its guests, and HostTuning's selectors
and `acs` for it. A guest's domain XML comes from the outputs when the stack exports it (a
`domainXml` map, VM name -> XML); else it is read on the host (`virsh dumpxml`). The rest is the
I/O: `connect` makes the same pinned `SshHost` the providers make, `gather` reads a node's facts
(providers/facts: `gather_facts`) and its guests' XML through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.deployed import config_json, is_vm_of, stack_nodes
from providers.errors import CommandFailed, HostError
from providers.facts import gather_facts
from providers.facts.models import HostFacts
from providers.host import ClientKey, Host, KeyFile, SecretKey, SshHost

DEFAULT_KEY = "~/.ssh/id_ed25519"
KEY, PASSPHRASE = "vela:sshPrivateKey", "vela:sshPrivateKeyPassphrase"
VIRSH = ["virsh", "-c", "qemu:///system"]  # the system libvirt, as the providers drive it


@dataclass(frozen=True)
class StackNode:
    name: str
    address: str
    port: int
    user: str
    host_key: str  # pinned, as the providers pin it
    # VM name -> its domain XML from the stack's outputs, or None: read it on the host.
    guests: dict[str, str | None] = field(default_factory=dict)
    gpu: list[str] | None = None  # HostTuning's gpuSelector on this node (None: its default)
    nic: list[str] | None = None
    acs: bool = True

    @property
    def where(self) -> str:
        return f"{self.name} ({self.address}:{self.port})"


def stack_nodes_to_draw(name: str, outputs: Mapping[str, Any],
                        config: Mapping[str, str]) -> list[StackNode]:
    """Each node of the stack with its guests and selectors. Pure but for reading the lab's
    inventory file when the config names one. A ValueError says what is missing."""
    addresses = outputs.get("vmAddresses")
    if not isinstance(addresses, dict):
        raise ValueError(f"stack {name} has no vmAddresses output, so it is not deployed: "
                         f"deploy it first (`scripts/up`), or name the stack that is (--stack)")
    nodes = stack_nodes(config)
    if not nodes:
        why = "its inventory lists none" if {"vela:nodes", "vela:inventoryFile"} & set(config) \
            else "neither vela:nodes nor vela:inventoryFile is set"
        raise ValueError(f"stack {name} names no nodes ({why}), so there is no host to draw")
    exported = outputs.get("domainXml")
    xml = exported if isinstance(exported, dict) else {}
    vms = list(dict.fromkeys([*addresses, *xml]))
    shape = _object(config, "vela:shape")
    overrides = _object(config, "vela:nodeOverrides")
    acs = _object(config, "vela:hostTuning").get("acs", True)
    found = []
    for node in nodes:
        merged = {**shape, **getattr(node, "overrides", {}), **(overrides.get(node.name) or {})}
        found.append(StackNode(
            name=node.name, address=node.address, port=node.port, user=node.user,
            host_key=node.host_key, guests={vm: xml.get(vm) or None for vm in vms
                                            if is_vm_of(vm, node.name)},
            gpu=merged.get("gpuSelector"), nic=merged.get("nicSelector"), acs=acs is not False))
    return found


def _object(config: Mapping[str, str], key: str) -> dict[str, Any]:
    value = config_json(config.get(key), key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} in the stack config is not an object")
    return value


def client_key(path: str | None, config: Mapping[str, str]) -> ClientKey:
    """The key that logs in to the hosts: `--key`, else the stack's own (`vela:sshPrivateKey`,
    the one the providers use), else ~/.ssh/id_ed25519. `config` holds the stack's secrets."""
    if path:
        return KeyFile(path)
    if config.get(KEY):
        return SecretKey(config[KEY], config.get(PASSPHRASE))
    return KeyFile(DEFAULT_KEY)


# -- I/O -----------------------------------------------------------------------------------------

def connect(node: StackNode, key: ClientKey, *, sysroot: str = "/") -> Host:
    """The node's host as the providers reach it: its address, port and user, its pinned host
    key; connections are pooled, and none is opened yet."""
    return SshHost(node.address, port=node.port, user=node.user, client_key=key,
                   pinned_host_keys=[node.host_key], sysroot=sysroot, name=node.where)


@dataclass
class Gathered:
    facts: HostFacts
    guests: list[str] = field(default_factory=list)  # domain XMLs
    problems: list[str] = field(default_factory=list)  # guests that could not be read


def gather(node: StackNode, host: Host) -> Gathered:
    """The node's facts (one remote command), and each guest's XML: from the outputs, else
    `virsh dumpxml` on the host. No facts: a HostError (its message names the host and says
    what to check); a guest that cannot be read is a problem, and the others are drawn."""
    try:
        found = Gathered(gather_facts(host))
    except CommandFailed as exc:
        raise HostError(node.where, (
            f"gathering its facts (providers/facts/gather.sh) failed: {_first(exc)}. Check "
            f"that {node.user} may read sysfs there (a user other than root runs it with "
            f"`sudo -n`), then run this again")) from None
    for vm, xml in node.guests.items():
        if xml:
            found.guests.append(xml)
            continue
        try:
            found.guests.append(host.run([*VIRSH, "dumpxml", vm], timeout=60).text)
        except CommandFailed as exc:
            found.problems.append(
                f"{node.where}: guest {vm} not drawn: `virsh dumpxml {vm}` failed there "
                f"({_first(exc)}). Check that it is defined (`virsh list --all` on the host; "
                f"`pulumi refresh` forgets a guest that is gone), then run this again")
    return found


def _first(exc: CommandFailed) -> str:
    lines = [line.strip() for line in (exc.stderr or exc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {exc.exit_code}"
