"""HostTuning: one hypervisor host made ready for near-bare-metal GPU VMs (recipe layers 1-3).

Modules, in the order a run uses them: `spec` (inputs), `observe` (what to read besides the
hardware facts), `target` (device selection, desired and original state), `preflight` (checks
before any write), `plan` (pure: changes to make), `bootunit` (what the boot unit re-applies),
`firmware` and `grub` (pure helpers), `provider` (the dynamic provider, on the shared converge
loop of `providers.common`).
"""

from __future__ import annotations

import pulumi

from ..common.dynamic import HostResource
from .provider import HostTuningProvider
from .spec import HostTuningArgs


class HostTuning(HostResource, module="vela", name="HostTuning"):
    """A hypervisor host tuned per the recipe. `args` are HostTuningArgs fields (camelCase)."""

    # The outputs, named as the engine sets them on the resource (OUTPUT_KEYS).
    gpus: pulumi.Output[list]
    nics: pulumi.Output[list]
    iommuGroups: pulumi.Output[dict]  # noqa: N815
    applied: pulumi.Output[dict]
    changes: pulumi.Output[list]
    pendingReboot: pulumi.Output[bool]  # noqa: N815
    pendingReasons: pulumi.Output[list]  # noqa: N815
    reboots: pulumi.Output[int]
    originals: pulumi.Output[str]  # JSON: null values survive only in a string
    inSync: pulumi.Output[bool]  # noqa: N815
    drift: pulumi.Output[list]

    provider_class = HostTuningProvider


__all__ = ["HostTuning", "HostTuningArgs", "HostTuningProvider"]
