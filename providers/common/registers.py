"""PCIe registers vela writes: masked 16-bit config-space writes, read back from the facts.

Offsets come from each function's own capability list (facts), so the same code works on any
device; setpci users know the registers as CAP_EXP+8 (Device Control), ECAP_ACS+6 and
ECAP_ATS+6.
"""

from __future__ import annotations

from pydantic import BaseModel

from ..facts.models import HostFacts, PciDevice

MRRS_MASK = 0x7000  # Device Control bits 14:12
ATS_ENABLE = 0x8000  # ATS Control bit 15


class Register(BaseModel):
    """A masked 16-bit config-space write: bits in `mask` take their value from `value`."""

    address: str
    offset: int
    value: int
    mask: int
    what: str

    @property
    def key(self) -> str:
        return f"{self.address}@{self.offset:#x}"


def current_register(facts: HostFacts, address: str, offset: int) -> int | None:
    """The 16-bit register at `offset` of a function's config space, from the facts."""
    device = facts.pci.get(address)
    raw = device.caps.raw if device and device.caps else None
    if raw is None or offset + 2 > len(raw):
        return None
    return int.from_bytes(raw[offset:offset + 2], "little")


def max_read_request(device: PciDevice, size: int) -> Register | None:
    """Max Read Request `size` bytes (128..4096) on a PCIe function, if it has the capability."""
    pcie = device.caps.pcie if device.caps else None
    if pcie is None:
        return None
    code = (size.bit_length() - 8) << 12  # 128 -> 0 ... 4096 -> 5
    return Register(address=device.address, offset=pcie.offset + 8, value=code, mask=MRRS_MASK,
                    what="Max Read Request")


def ats_enable(device: PciDevice, enabled: bool) -> Register | None:
    """ATS on (or off) for a function that has the ATS capability."""
    ats = device.caps.ats if device.caps else None
    if ats is None:
        return None
    return Register(address=device.address, offset=ats.offset + 6,
                    value=ATS_ENABLE if enabled else 0, mask=ATS_ENABLE, what="ATS enable")
