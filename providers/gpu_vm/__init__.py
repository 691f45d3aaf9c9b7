"""GpuVm: a libvirt domain that mirrors its host, with GPU and VF passthrough (layers 4-6).

Modules: `spec` (inputs), `placement` (policy: devices, NUMA, CPUs, the guest PCIe tree),
`xml` (pure XML builders, one per concern, and schema validation), `guest` (first-boot seed,
guest tuning, NCCL topology and environment), `observe` (libvirt's view), `provider`.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from .provider import OUTPUT_KEYS, GpuVmProvider
from .spec import GpuVmArgs


class GpuVm(Resource, module="vela", name="GpuVm"):
    """A GPU guest. `args` are GpuVmArgs fields (camelCase)."""

    addresses: pulumi.Output[list]
    nccl_topology: pulumi.Output[str]

    def __init__(self, name: str, args: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GpuVmProvider(), name,
                         {**args, **{key: None for key in OUTPUT_KEYS}}, opts)


__all__ = ["GpuVm", "GpuVmArgs", "GpuVmProvider"]
