"""The plan model every resource shares, and the planners for what more than one resource owns.

A `Plan` is what a pure planner returns: the `Change`s to make, in order, each with the shell
calls that make it and when it takes effect; the `Pending` items that are configured but wait
for a reboot; and how many reboots finishing needs. The planners here (files, a boot unit,
config-space registers, driver bindings) serve HostTuning and SriovPool alike, so a rule about
any of them lives in one place.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from ..facts.models import HostFacts, PciDevice
from . import shell
from .registers import Register, current_register

O = TypeVar("O")  # noqa: E741 - a resource's own observations, whatever their type


@dataclass
class Snapshot(Generic[O]):
    """Everything a planner reads: the hardware facts and the resource's own observations."""

    facts: HostFacts
    observed: O


@dataclass(frozen=True)
class Round:
    """Where a converge run is when it plans: after a reboot or not, and which apply round
    of this boot (0: nothing applied yet)."""

    booted: bool
    number: int


# runtime: active as soon as the call returns. next-boot: configured now, active after a
# reboot (the kernel command line). firmware: stored in the device now, current after a reboot.
Effect = Literal["runtime", "next-boot", "firmware"]
# What a reboot is waited for: a kernel argument, a firmware value, or huge pages the kernel
# could not allocate at run time (the command line reserves them at boot).
PendingCause = Literal["kernel-args", "firmware", "hugepages", "iommu"]
_CAUSE_NAMES = {"kernel-args": "kernel command line", "firmware": "firmware",
                "hugepages": "huge pages", "iommu": "vfio-pci"}


class Change(BaseModel):
    kind: str
    subject: str
    detail: str
    effect: Effect = "runtime"
    calls: list[str] = Field(default_factory=list, exclude=True)

    def summary(self) -> str:
        suffix = "" if self.effect == "runtime" else f" ({self.effect})"
        return f"{self.kind} {self.subject}: {self.detail}{suffix}"


class Pending(BaseModel):
    """Something configured that becomes active only after a reboot."""

    cause: PendingCause
    subject: str = ""
    detail: str

    @property
    def what(self) -> str:
        """The kind of setting in words ("kernel command line", "firmware")."""
        return _CAUSE_NAMES[self.cause]

    def __str__(self) -> str:
        subject = f" {self.subject}" if self.subject else ""
        return f"{self.what}{subject}: {self.detail}"


class Plan(BaseModel):
    changes: list[Change] = Field(default_factory=list)
    pending: list[Pending] = Field(default_factory=list)
    reboots_required: int = 0

    @property
    def calls(self) -> list[str]:
        return [call for change in self.changes for call in change.calls]

    def summaries(self) -> list[str]:
        return [change.summary() for change in self.changes]

    def reasons(self) -> list[str]:
        return [str(item) for item in self.pending]


# -- planners for what several resources own ----------------------------------------------------

def file_changes(wanted: dict[str, str | None], current: dict[str, str | None],
                 executables: Collection[str] = ()) -> list[Change]:
    """Write each file whose content differs (mode 0755 for `executables`, else 0644), remove
    each that should be absent."""
    changes = []
    for path, content in wanted.items():
        now = current.get(path)
        if content == now:
            continue
        if content is None:
            changes.append(Change(kind="file", subject=path, detail="remove",
                                  calls=[shell.call("vela_remove_file", path)]))
        else:
            changes.append(Change(kind="file", subject=path,
                                  detail="create" if now is None else "update",
                                  calls=[shell.write_file(path, content,
                                                     0o755 if path in executables else 0o644)]))
    return changes


def unit_changes(unit: str, wanted: bool | None, enabled: bool) -> list[Change]:
    """Enable or disable a systemd unit (None: not managed)."""
    if wanted is None or wanted == enabled:
        return []
    verb = "enable" if wanted else "disable"
    return [Change(kind="unit", subject=unit, detail=verb,
                   calls=[shell.call("vela_unit", verb, unit)])]


def register_changes(registers: dict[str, Register], facts: HostFacts) -> list[Change]:
    """Masked config-space writes for the registers whose masked bits differ."""
    changes = []
    for _, register in sorted(registers.items()):
        current = current_register(facts, register.address, register.offset)
        if current is None or current & register.mask == register.value & register.mask:
            continue
        new = (current & ~register.mask) | (register.value & register.mask)
        changes.append(Change(kind="register", subject=register.address,
                              detail=f"{register.what} {current:#06x} -> {new:#06x}",
                              calls=[shell.call("vela_cfg_write", register.address,
                                                register.offset, register.value,
                                                register.mask)]))
    return changes


def driver_change(device: PciDevice, wanted: str | None, *,
                  vfio_wait: int | None = None) -> Change | None:
    """Bind a function to `wanted` through driver_override, or (None) back to its default
    driver when vela's override or vfio-pci still holds it. With `vfio_wait`, a vfio-pci
    binding also waits for the group's /dev/vfio node (udev creates it asynchronously)."""
    if wanted:
        if device.driver == wanted and device.driver_override == wanted:
            return None
        detail = f"{device.driver or 'no driver'} -> {wanted}"
    else:
        if device.driver_override is None and device.driver != "vfio-pci":
            return None
        detail = f"{device.driver or 'no driver'} -> default driver"
    calls = [shell.call("vela_bind", device.address, wanted or "")]
    if wanted == "vfio-pci" and vfio_wait is not None:
        calls.append(shell.call("vela_wait_vfio", device.address, vfio_wait))
    return Change(kind="driver", subject=device.address, detail=detail, calls=calls)
