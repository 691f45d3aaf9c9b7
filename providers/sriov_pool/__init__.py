"""SriovPool: the virtual functions of one NIC port, ready for passthrough (recipe layer 3).

Modules: `spec` (inputs, deterministic MACs), `observe` (VF settings, libvirt users, files),
`plan` (desired and original state, the changes between them, the boot unit), `provider`.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from .provider import OUTPUT_KEYS, SriovPoolProvider
from .spec import SriovPoolArgs


class SriovPool(Resource, module="vela", name="SriovPool"):
    """A NIC port's VFs. `args` are SriovPoolArgs fields (camelCase)."""

    vfs: pulumi.Output[list]
    pf_device: pulumi.Output[dict]

    def __init__(self, name: str, args: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SriovPoolProvider(), name,
                         {**args, **{key: None for key in OUTPUT_KEYS}}, opts)


__all__ = ["SriovPool", "SriovPoolArgs", "SriovPoolProvider"]
