"""A deployed stack, as the acceptance benchmark sees it: its machines and how to reach them.

`read_stack` asks the Automation API for the stack's outputs and config (what `pulumi stack
output --json` and `pulumi config --json` print), with the same CLI, backend and passphrase as
`scripts/up` (components/runner.py); `stack_info` turns them into machines, and is pure.
VMs come from the outputs (`vmAddresses`, `hostfile`, `ncclEnvironment`) and log in as the
guest user of `vela:guest`; hosts (the bare-metal baseline) come from `vela:nodes` or the lab's
`vela:inventoryFile`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import Machine

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StackInfo:
    name: str
    vms: list[Machine]
    hosts: list[Machine]
    hostfile: str
    lab: bool  # vela:labHosts is set: the lab, with no GPUs


def stack_info(name: str, outputs: dict[str, Any], config: dict[str, str]) -> StackInfo:
    """`outputs`: output name -> value; `config`: "vela:key" -> its value as the CLI stores it
    (objects as JSON text)."""
    addresses = outputs.get("vmAddresses")
    if not isinstance(addresses, dict):
        raise ValueError(f"stack {name} has no vmAddresses output: deploy it first "
                         f"(`scripts/up`), or name the stack that is deployed (--stack)")
    guest = _json(config.get("vela:guest"), "vela:guest") or {}
    user = guest.get("user", "vela")
    slots = _slots(outputs.get("hostfile", ""))
    environments = outputs.get("ncclEnvironment") or {}
    vms = []
    for vm, found in addresses.items():
        if not found:
            raise ValueError(f"VM {vm} has no address yet (no DHCP lease): wait for it to boot, "
                             f"then `pulumi refresh`, or check its console log on its host")
        vms.append(Machine(name=vm, address=found[0], user=user, slots=slots.get(found[0], 1),
                           environment=dict(environments.get(vm) or {})))
    return StackInfo(name=name, vms=vms, hosts=_hosts(config), lab="vela:labHosts" in config,
                     hostfile=outputs.get("hostfile", ""))


def _slots(hostfile: str) -> dict[str, int]:
    slots = {}
    for line in hostfile.splitlines():
        fields = line.split()
        if fields:
            count = next((f.split("=", 1)[1] for f in fields[1:] if f.startswith("slots=")), "1")
            slots[fields[0]] = int(count)
    return slots


def _hosts(config: dict[str, str]) -> list[Machine]:
    from components.inventory import load_inventory_file, parse_nodes

    if "vela:nodes" in config:
        nodes = parse_nodes(_json(config["vela:nodes"], "vela:nodes"))
    elif "vela:inventoryFile" in config:
        nodes = load_inventory_file(PROJECT_ROOT / config["vela:inventoryFile"])
    else:
        return []
    return [Machine(name=node.name, address=node.address, user=node.user, port=node.port,
                    host_keys=(node.host_key,))
            for node in nodes]


def _json(text: str | None, key: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{key} in the stack config is not JSON: set it with "
                         f"`pulumi config set --path`") from None


def read_stack(name: str) -> StackInfo:  # pragma: no cover - needs a deployed stack
    from pulumi import automation as auto

    from components.runner import PROJECT_NAME, cli_environment, pulumi_command

    env = cli_environment()
    try:
        stack = auto.select_stack(
            stack_name=name, project_name=PROJECT_NAME, program=lambda: None,
            opts=auto.LocalWorkspaceOptions(work_dir=str(PROJECT_ROOT), env_vars=env,
                                            pulumi_command=pulumi_command(env)))
    except auto.errors.StackNotFoundError:
        raise ValueError(f"no stack {name} in the backend {env.get('PULUMI_BACKEND_URL', '')}: "
                         "deploy it with `scripts/up`, and run this with the same "
                         "PULUMI_BACKEND_URL") from None
    outputs = {key: value.value for key, value in stack.outputs().items()}
    config = {key: value.value for key, value in stack.get_all_config().items()
              if not value.secret}
    return stack_info(name, outputs, config)
