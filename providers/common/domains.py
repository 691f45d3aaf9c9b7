"""The mark vela leaves in the libvirt domains it makes, and what other resources read from it.

GpuVm writes `<metadata><vela:owner resource="GpuVm" shutdownTimeout="N"/></metadata>`; GpuVm's
read and delete refuse a domain without it, and HostTuning, before it reboots a host, shuts down
the running domains that carry it (within their own shutdown timeout) and refuses to reboot
under anyone else's.
"""

from __future__ import annotations

VELA_NS = "https://vela.invalid/libvirt/domain/1"
OWNER = f"metadata/{{{VELA_NS}}}owner"
DEFAULT_SHUTDOWN_TIMEOUT = 120  # GpuVm's default, for domains made before the attribute


def owner(root):
    """The vela owner element of a parsed domain (None: not vela's)."""
    return root.find(OWNER)


def shutdown_timeout(root) -> int:
    """Seconds a graceful shutdown of this vela domain may take before it is powered off."""
    mark = owner(root)
    value = mark.get("shutdownTimeout") if mark is not None else None
    return int(value) if value and value.isdigit() else DEFAULT_SHUTDOWN_TIMEOUT
