"""What the XML modules need besides the placement: a typed, validated domain spec."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class DomainSpec(BaseModel):
    name: str
    uuid: str | None = None
    domain_type: Literal["kvm", "qemu"]
    cpu_model: str
    phys_bits_mode: Literal["passthrough", "emulate", "none"]
    hugepage_kib: int | None
    firmware: Literal["bios", "efi"]
    disk: str | None = None  # the guest's own volume
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    seed: str | None = None  # the NoCloud seed image
    network: str = "default"
    console_log: str | None = None
    ats_on_controllers: bool = True
    shutdown_timeout: int = 120  # seconds, recorded in vela's metadata
