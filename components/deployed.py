"""A deployed stack read back: its outputs, its config and its nodes, for the tools that work
on a stack after `scripts/up` (`python -m acceptance`, `python -m topology --stack`).

`read_deployed` asks the Automation API for the stack's outputs and config (what `pulumi stack
output --json` and `pulumi config --json` print), with the same CLI, backend and passphrase as
`scripts/up` (components/runner.py). Everything else is pure: `config_json` reads an object
value as the CLI stores it (JSON text), `stack_nodes` the nodes of `vela:nodes` or of the lab's
`vela:inventoryFile`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Deployed:
    name: str
    outputs: dict[str, Any]  # output name -> value
    config: dict[str, str]  # "vela:key" -> its value as the CLI stores it (objects as JSON text)
    # The secret config values asked for (`read_deployed(secrets=...)`), never printed.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


def config_json(text: str | None, key: str) -> Any:
    """An object or list of the stack config (the CLI keeps them as JSON text); None if unset."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{key} in the stack config is not JSON: set it with "
                         f"`pulumi config set --path`") from None


def is_vm_of(vm: str, node: str) -> bool:
    """VelaCluster names a node's VMs NODE-vmI (components/cluster.py): "a-vm0-vm0" is node
    "a-vm0"'s, not node "a"'s."""
    return re.fullmatch(re.escape(node) + r"-vm[0-9]+", vm) is not None


def stack_nodes(config: Mapping[str, str], root: Path = PROJECT_ROOT) -> list:
    """The nodes (`ClusterNode`s: name, address, port, user, host_key, overrides) of
    `vela:nodes`, else of `vela:inventoryFile` (relative to `root`, as the program reads it);
    none when neither is set. A bad inventory is a ValueError naming the key."""
    from components.cluster_spec import ClusterNode
    from components.inventory import load_inventory_file, parse_nodes

    if "vela:nodes" in config:
        return parse_nodes(config_json(config["vela:nodes"], "vela:nodes"), model=ClusterNode)
    if "vela:inventoryFile" in config:
        return load_inventory_file(root / config["vela:inventoryFile"])
    return []


def read_deployed(name: str, *, secrets: tuple[str, ...] = (), work_dir: Path = PROJECT_ROOT,
                  env: Mapping[str, str] | None = None) -> Deployed:
    """The stack's outputs and its config; secret config values are left out, but for the
    keys named in `secrets`. Every failure is a ValueError that says what to do."""
    from pulumi import automation as auto

    from components.runner import PROJECT_NAME, cli_environment, pulumi_command

    env = cli_environment(env)
    backend = env.get("PULUMI_BACKEND_URL", "(the CLI's default, `pulumi login`)")
    try:
        stack = auto.select_stack(
            stack_name=name, project_name=PROJECT_NAME, program=lambda: None,
            opts=auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=env,
                                            pulumi_command=pulumi_command(env)))
        outputs = {key: value.value for key, value in stack.outputs().items()}
        config = stack.get_all_config()
    except auto.errors.StackNotFoundError:
        raise ValueError(f"no stack {name} in the backend {backend}: deploy it with "
                         "`scripts/up`, and run this with the same PULUMI_BACKEND_URL") from None
    except auto.errors.CommandError as exc:
        said = [line.strip().removeprefix("stderr:").strip().removeprefix("error:").strip()
                for line in str(exc).splitlines()
                if line.strip().removeprefix("stderr:").strip().startswith("error:")]
        raise ValueError(f"cannot read stack {name} from the backend {backend} "
                         f"({said[-1] if said else 'the pulumi CLI failed'}): run this with the "
                         "PULUMI_BACKEND_URL and PULUMI_CONFIG_PASSPHRASE(_FILE) that "
                         "`scripts/up` used") from None
    return Deployed(name=name, outputs=outputs,
                    config={key: value.value for key, value in config.items()
                            if not value.secret},
                    secrets={key: value.value for key, value in config.items()
                             if value.secret and key in secrets})
