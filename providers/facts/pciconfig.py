"""Decoding of raw PCI configuration space: the PCIe, ACS, ATS and SR-IOV capabilities.

Pure functions from bytes (sysfs `config`, or an `lspci -xxxx` dump) to a `PcieCapabilities`
model. Offsets and bit fields follow the PCI Express Base Specification; pciutils' `setpci`
names (CAP_EXP, ECAP_ACS, ECAP_ATS, ECAP_SRIOV) address the same registers, which is how the
providers write them. Unprivileged readers see only the first 64 bytes of config space: then
everything past the header is reported as unknown (None), never guessed.
"""

from __future__ import annotations

import struct

from pydantic import BaseModel, Field

CAP_ID_PCIE = 0x10
ECAP_ID_ACS = 0x000D
ECAP_ID_ATS = 0x000F
ECAP_ID_SRIOV = 0x0010

# PCI Express Capabilities register, bits 7:4.
PORT_TYPES = {
    0x0: "endpoint",
    0x1: "legacy_endpoint",
    0x4: "root_port",
    0x5: "upstream_port",
    0x6: "downstream_port",
    0x7: "pcie_to_pci_bridge",
    0x8: "pci_to_pcie_bridge",
    0x9: "rc_integrated_endpoint",
    0xA: "rc_event_collector",
}

# ACS Capability / Control bits (same layout in both registers).
ACS_BITS = {
    "source_validation": 0x01,
    "translation_blocking": 0x02,
    "request_redirect": 0x04,
    "completion_redirect": 0x08,
    "upstream_forwarding": 0x10,
    "egress_control": 0x20,
    "direct_translated_p2p": 0x40,
}
ATS_ENABLE = 0x8000


class PcieCap(BaseModel):
    """The PCI Express capability (CAP_EXP)."""

    offset: int
    version: int
    port_type: str
    max_payload_supported: int  # bytes
    max_payload: int  # bytes, Device Control 7:5
    max_read_request: int  # bytes, Device Control 14:12
    device_control: int  # the raw register, for masked writes and restore
    link_speed: int | None = None  # Link Status 3:0 (1 = 2.5 GT/s ... 6 = 64 GT/s)
    link_width: int | None = None  # Link Status 9:4


class AcsCap(BaseModel):
    """Access Control Services (ECAP_ACS): what the port can do and what is on."""

    offset: int
    capability: int
    control: int

    def supported(self) -> set[str]:
        return {name for name, bit in ACS_BITS.items() if self.capability & bit}

    def enabled(self) -> set[str]:
        return {name for name, bit in ACS_BITS.items() if self.control & bit}


class AtsCap(BaseModel):
    """Address Translation Services (ECAP_ATS)."""

    offset: int
    capability: int
    control: int

    @property
    def enabled(self) -> bool:
        return bool(self.control & ATS_ENABLE)


class SriovCap(BaseModel):
    """Single Root I/O Virtualization (ECAP_SRIOV) as the device itself reports it."""

    offset: int
    control: int
    initial_vfs: int
    total_vfs: int
    num_vfs: int
    vf_offset: int
    vf_stride: int
    vf_device_id: int

    @property
    def vf_enabled(self) -> bool:
        return bool(self.control & 0x1)


class PcieCapabilities(BaseModel):
    """Everything vela reads from one function's config space. None = absent or unreadable."""

    config_size: int
    header_type: int
    pcie: PcieCap | None = None
    acs: AcsCap | None = None
    ats: AtsCap | None = None
    sriov: SriovCap | None = None
    extended_readable: bool = False  # False when only 64/256 bytes could be read
    raw: bytes = Field(default=b"", repr=False, exclude=True)  # for reading any register

    @property
    def is_bridge(self) -> bool:
        return self.header_type & 0x7F == 1


def _u8(data: bytes, offset: int) -> int:
    return data[offset]


def _u16(data: bytes, offset: int) -> int:
    return struct.unpack_from("<H", data, offset)[0]


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def standard_capabilities(data: bytes) -> dict[int, int]:
    """Capability id -> offset, walking the list that starts at 0x34 (first instance wins)."""
    found: dict[int, int] = {}
    if len(data) < 0x40 or not _u16(data, 0x06) & 0x10:  # Status: Capabilities List
        return found
    pointer = _u8(data, 0x34) & 0xFC
    seen: set[int] = set()
    while 0x40 <= pointer < min(len(data), 0x100) - 1 and pointer not in seen:
        seen.add(pointer)
        cap_id = _u8(data, pointer)
        found.setdefault(cap_id, pointer)
        pointer = _u8(data, pointer + 1) & 0xFC
    return found


def extended_capabilities(data: bytes) -> dict[int, int]:
    """Extended capability id -> offset, walking the list at 0x100 (first instance wins)."""
    found: dict[int, int] = {}
    pointer = 0x100
    seen: set[int] = set()
    while 0x100 <= pointer <= len(data) - 4 and pointer not in seen:
        seen.add(pointer)
        header = _u32(data, pointer)
        if header in (0, 0xFFFFFFFF):
            break
        found.setdefault(header & 0xFFFF, pointer)
        pointer = (header >> 20) & 0xFFC
    return found


def decode(data: bytes) -> PcieCapabilities:
    """Decode one function's config space (any length; 4096 bytes gives everything)."""
    result = PcieCapabilities(config_size=len(data),
                              header_type=_u8(data, 0x0E) if len(data) > 0x0E else 0,
                              extended_readable=len(data) > 0x100, raw=bytes(data))
    caps = standard_capabilities(data)
    if CAP_ID_PCIE in caps and caps[CAP_ID_PCIE] + 0x14 <= len(data):
        result.pcie = _pcie(data, caps[CAP_ID_PCIE])
    if result.pcie is not None and result.extended_readable:
        ecaps = extended_capabilities(data)
        if ECAP_ID_ACS in ecaps:
            offset = ecaps[ECAP_ID_ACS]
            result.acs = AcsCap(offset=offset, capability=_u16(data, offset + 4),
                                control=_u16(data, offset + 6))
        if ECAP_ID_ATS in ecaps:
            offset = ecaps[ECAP_ID_ATS]
            result.ats = AtsCap(offset=offset, capability=_u16(data, offset + 4),
                                control=_u16(data, offset + 6))
        if ECAP_ID_SRIOV in ecaps:
            result.sriov = _sriov(data, ecaps[ECAP_ID_SRIOV])
    return result


def _pcie(data: bytes, offset: int) -> PcieCap:
    flags = _u16(data, offset + 0x02)
    devcap = _u32(data, offset + 0x04)
    devctl = _u16(data, offset + 0x08)
    link_status = _u16(data, offset + 0x12)
    port_type = (flags >> 4) & 0xF
    return PcieCap(
        offset=offset,
        version=flags & 0xF,
        port_type=PORT_TYPES.get(port_type, f"type_{port_type:x}"),
        max_payload_supported=128 << (devcap & 0x7),
        max_payload=128 << ((devctl >> 5) & 0x7),
        max_read_request=128 << ((devctl >> 12) & 0x7),
        device_control=devctl,
        link_speed=(link_status & 0xF) or None,
        link_width=((link_status >> 4) & 0x3F) or None,
    )


def _sriov(data: bytes, offset: int) -> SriovCap:
    return SriovCap(
        offset=offset,
        control=_u16(data, offset + 0x08),
        initial_vfs=_u16(data, offset + 0x0C),
        total_vfs=_u16(data, offset + 0x0E),
        num_vfs=_u16(data, offset + 0x10),
        vf_offset=_u16(data, offset + 0x14),
        vf_stride=_u16(data, offset + 0x16),
        vf_device_id=_u16(data, offset + 0x1A),
    )
