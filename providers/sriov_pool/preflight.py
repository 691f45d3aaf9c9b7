"""Checks that must pass before SriovPool writes anything. Pure."""

from __future__ import annotations

from ..facts.models import PciDevice
from .spec import SriovPoolArgs, too_many_vfs


def preflight(spec: SriovPoolArgs, pf: PciDevice) -> list[str]:
    if pf.sriov_totalvfs is None:
        return [f"{pf.address} ({pf.vendor_device}) has no SR-IOV capability: turn on "
                f"\"SR-IOV Support\" in the BIOS setup (on ConnectX also SRIOV_EN in the NIC "
                f"firmware, e.g. through HostTuning), then reboot"]
    if spec.num_vfs > pf.sriov_totalvfs:
        return [too_many_vfs(spec.pf, spec.num_vfs, pf.sriov_totalvfs)]
    return []
