"""HostTuning: one hypervisor host made ready for near-bare-metal GPU VMs (recipe layers 1-3).

Modules, in the order a run uses them: `spec` (inputs), `observe` (what to read besides the
hardware facts), `target` (device selection, desired and original state), `preflight` (checks
before any write), `plan` (pure: changes to make), `shell` and `bootunit` (the host-side
actions), `firmware` and `grub` (pure helpers), `provider` (the dynamic provider).
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from .provider import OUTPUT_KEYS, HostTuningProvider
from .spec import HostTuningArgs


class HostTuning(Resource, module="vela", name="HostTuning"):
    """A hypervisor host tuned per the recipe. `args` are HostTuningArgs fields (camelCase)."""

    gpus: pulumi.Output[list]
    nics: pulumi.Output[list]
    iommu_groups: pulumi.Output[dict]
    pending_reboot: pulumi.Output[bool]
    originals: pulumi.Output[dict]

    def __init__(self, name: str, args: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(HostTuningProvider(), name,
                         {**args, **{key: None for key in OUTPUT_KEYS}}, opts)


__all__ = ["HostTuning", "HostTuningArgs", "HostTuningProvider"]
