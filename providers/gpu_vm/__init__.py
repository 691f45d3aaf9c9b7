"""GpuVm: a libvirt domain that mirrors its host, with GPU and VF passthrough (layers 4-6).

Modules, in the order a run uses them: `spec` (inputs), `observe` (libvirt's view),
`placement` (policy: devices, NUMA, CPUs, the guest PCIe tree), `target` (the domain vela
wants: XML, seed, volume), `preflight` (checks before any write), `plan` (pure: changes to
make, and the removal), `xml` (pure XML builders, one per concern, and schema validation),
`guest` (first-boot seed, guest tuning, NCCL topology and environment), `provider` (the dynamic
provider, on the shared converge loop of `providers.common`).
"""

from __future__ import annotations

import pulumi

from ..common.dynamic import HostResource
from .provider import GpuVmProvider
from .spec import GpuVmArgs


class GpuVm(HostResource, module="vela", name="GpuVm"):
    """A GPU guest. `args` are GpuVmArgs fields (camelCase)."""

    # The outputs, named as the engine sets them on the resource (OUTPUT_KEYS).
    uuid: pulumi.Output[str]
    state: pulumi.Output[str]
    addresses: pulumi.Output[list]
    domainXml: pulumi.Output[str]  # noqa: N815
    ncclTopology: pulumi.Output[str]  # noqa: N815
    ncclEnvironment: pulumi.Output[dict]  # noqa: N815
    nvlink: pulumi.Output[bool]  # None: the host has no NVSwitches
    placement: pulumi.Output[dict]
    changes: pulumi.Output[list]
    inSync: pulumi.Output[bool]  # noqa: N815
    drift: pulumi.Output[list]

    provider_class = GpuVmProvider


__all__ = ["GpuVm", "GpuVmArgs", "GpuVmProvider"]
