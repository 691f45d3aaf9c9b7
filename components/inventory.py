"""The node inventory of a stack: which hypervisor hosts vela manages and how to reach them.

Parsed from stack config by `__main__.py` (the only place that reads config) into typed
`NodeSpec`s. Every problem is reported with the config key and index that holds it, so
`pulumi preview` says exactly what to fix.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from providers.host.target import SshTarget


class InventoryError(ValueError):
    """The inventory in stack config is invalid; the message names the key."""


class NodeSpec(SshTarget):
    """One hypervisor host: a name for its resources, and how to reach it."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


def repeated_names(nodes: list[NodeSpec]) -> list[str]:
    """Node names given more than once, sorted (names key the resources, so they are unique)."""
    counts = Counter(node.name for node in nodes)
    return sorted(name for name, count in counts.items() if count > 1)


def parse_nodes(raw: Any, key: str = "vela:nodes",
                model: type[NodeSpec] = NodeSpec) -> list[NodeSpec]:
    """Validate the list under `key`; names must be unique (they name each node's resources)."""
    if not isinstance(raw, list):
        raise InventoryError(f"{key} must be a list of nodes, got {type(raw).__name__}")
    nodes = []
    for index, entry in enumerate(raw):
        try:
            nodes.append(model.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'entry'}: {error['msg']}"
                                 for error in exc.errors())
            raise InventoryError(f"{key}[{index}] is invalid: {problems}") from None
    duplicates = repeated_names(nodes)
    if duplicates:
        raise InventoryError(f"{key}: node names must be unique; repeated: {duplicates}")
    return nodes


def load_inventory_file(path: Path, key: str = "vela:inventoryFile") -> list[NodeSpec]:
    """Nodes from an inventory file (the lab writes one: `scripts/lab up`)."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InventoryError(f"{key}: {path} does not exist; for the lab, start it with "
                             f"`scripts/lab up --hosts N` (scripts/up does this for you)") from None
    except (OSError, ValueError) as exc:
        raise InventoryError(f"{key}: cannot read {path}: {exc}") from None
    hosts = document.get("hosts") if isinstance(document, dict) else None
    return parse_nodes(hosts, key=f"{key} ({path}) hosts")
