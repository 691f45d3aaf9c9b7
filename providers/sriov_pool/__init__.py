"""SriovPool: the virtual functions of one NIC port, ready for passthrough (recipe layer 3).

Modules, in the order a run uses them: `spec` (inputs, deterministic MACs), `observe` (VF
settings, libvirt users, files), `target` (the PF, desired and original state), `preflight`
(checks before any write), `plan` (pure: changes to make), `bootunit` (the VFs re-created at
boot), `hook` (the libvirt hook that writes the VFs' ATS again after vfio-pci reset them),
`provider` (the dynamic provider, on the shared converge loop of `providers.common`).
"""

from __future__ import annotations

import pulumi

from ..common.dynamic import HostResource
from .provider import SriovPoolProvider
from .spec import SriovPoolArgs


class SriovPool(HostResource, module="vela", name="SriovPool"):
    """A NIC port's VFs. `args` are SriovPoolArgs fields (camelCase)."""

    # The outputs, named as the engine sets them on the resource (OUTPUT_KEYS).
    pfDevice: pulumi.Output[dict]  # noqa: N815
    vfs: pulumi.Output[list]
    networkName: pulumi.Output[str]  # noqa: N815
    changes: pulumi.Output[list]
    originals: pulumi.Output[str]  # JSON: null values survive only in a string
    inSync: pulumi.Output[bool]  # noqa: N815
    drift: pulumi.Output[list]

    provider_class = SriovPoolProvider


__all__ = ["SriovPool", "SriovPoolArgs", "SriovPoolProvider"]
