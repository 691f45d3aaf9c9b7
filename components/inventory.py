"""The node inventory of a stack: which hypervisor hosts vela manages and how to reach them.

Parsed from stack config by `components.program` (the only place that reads config) into typed
`NodeSpec`s. Every problem is reported with the config key and index that holds it, so
`pulumi preview` says exactly what to fix.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError

from providers.host.target import SshTarget

_NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class InventoryError(ValueError):
    """The inventory in stack config is invalid; the message names the key."""


def node_name(value: str) -> str:
    """A node's name: it names the node's resources (NAME-host, NAME-PORT, NAME-vmI)."""
    if not isinstance(value, str) or not _NODE_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid node name: use 1 to 63 lower-case letters, "
                         f"digits and '-', starting with a letter or digit (it names the node's "
                         f"resources: NAME-host, NAME-vm0)")
    return value


class NodeSpec(SshTarget):
    """One hypervisor host: a name for its resources, and how to reach it."""

    name: Annotated[str, AfterValidator(node_name)]


def repeated_names(nodes: list[NodeSpec]) -> list[str]:
    """Node names given more than once, sorted (names key the resources, so they are unique)."""
    counts = Counter(node.name for node in nodes)
    return sorted(name for name, count in counts.items() if count > 1)


def error_lines(exc: ValidationError, whole: str = "entry") -> str:
    """pydantic's errors as `field: reason`; our validators' messages without pydantic's
    "Value error, " prefix, and never the input (it may be a key pasted in the wrong place)."""
    return "; ".join(f"{'.'.join(map(str, error['loc'])) or whole}: "
                     f"{re.sub(r'^Value error, ', '', error['msg'])}" for error in exc.errors())


def json_type(value: Any) -> str:
    """What a config value is, in JSON's words (the config is JSON or YAML, not Python)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_nodes(raw: Any, key: str = "vela:nodes",
                model: type[NodeSpec] = NodeSpec) -> list[NodeSpec]:
    """Validate the list under `key`. Names must be unique (they name each node's resources),
    and so must address:port (two entries for one host would both tune it and split its GPUs
    between two sets of VMs)."""
    if not isinstance(raw, list):
        raise InventoryError(f"{key} must be a list of nodes, got {json_type(raw)}")
    nodes = []
    for index, entry in enumerate(raw):
        try:
            nodes.append(model.model_validate(entry))
        except ValidationError as exc:
            raise InventoryError(f"{key}[{index}] is invalid: {error_lines(exc)}") from None
    names: dict[str, int] = {}
    hosts: dict[tuple[str, int], int] = {}
    for index, node in enumerate(nodes):
        first = names.setdefault(node.name, index)
        if first != index:
            raise InventoryError(
                f"{key}[{index}].name: {node.name!r} is already the name of {key}[{first}]; "
                f"node names must be unique (each names its node's resources)")
        first = hosts.setdefault((node.address, node.port), index)
        if first != index:
            raise InventoryError(
                f"{key}[{index}] ({node.name}): address and port {node.address}:{node.port} "
                f"are already those of {key}[{first}] ({nodes[first].name}); two nodes cannot "
                f"be one host: remove one, or correct its address or port")
    return nodes


def load_inventory_file(path: Path, key: str = "vela:inventoryFile") -> list[NodeSpec]:
    """Nodes from an inventory file (the lab writes one: `scripts/lab up`). A file that is
    missing or unreadable is an error naming it, never an empty inventory."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InventoryError(f"{key}: {path} does not exist; for the lab, start it with "
                             f"`scripts/lab up --hosts N` (scripts/up does this for you)") from None
    except (OSError, ValueError) as exc:
        raise InventoryError(f"{key}: cannot read {path}: {exc}") from None
    hosts = document.get("hosts") if isinstance(document, dict) else None
    if hosts is None:
        raise InventoryError(f"{key}: {path} has no \"hosts\" list: an inventory file is a JSON "
                             f"object {{\"hosts\": [{{\"name\", \"address\", \"port\", "
                             f"\"hostKey\"}}, ...]}}, as `scripts/lab up` writes it")
    return parse_nodes(hosts, key=f"{key} ({path}) hosts")
