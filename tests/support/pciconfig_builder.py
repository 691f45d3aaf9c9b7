"""Builds PCI configuration space bytes for fake devices (the inverse of
`providers.facts.pciconfig.decode`).

Layouts follow real hardware: a Power Management capability at 0x40, PCI Express at 0x60 (as on
the recorded ConnectX-7), AER at 0x100 and the other extended capabilities after it. Tests check
that decoding what this writes gives back what was asked for, and the decoder itself is checked
against real recorded dumps, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from providers.facts.pciconfig import (
    ECAP_ID_ACS,
    ECAP_ID_ATS,
    ECAP_ID_SRIOV,
    PORT_TYPES,
)

_PORT_TYPE_CODES = {name: code for code, name in PORT_TYPES.items()}
_MPS_CODES = {128 << code: code for code in range(6)}


@dataclass
class ConfigSpec:
    vendor_id: int
    device_id: int
    class_code: int
    port_type: str  # a value of PORT_TYPES
    bridge: bool = False
    multifunction: bool = False
    revision: int = 0xA1
    subsystem_vendor_id: int = 0
    subsystem_device_id: int = 0
    primary_bus: int = 0
    secondary_bus: int = 0
    subordinate_bus: int = 0
    max_payload_supported: int = 512
    max_payload: int = 256
    max_read_request: int = 512
    link_speed: int = 4  # 16 GT/s
    link_width: int = 16
    acs: tuple[int, int] | None = None  # (capability, control)
    ats_control: int | None = None  # None: no ATS capability
    sriov: dict | None = None  # total_vfs, num_vfs, vf_offset, vf_stride, vf_device_id


def build_config(spec: ConfigSpec) -> bytes:
    data = bytearray(4096)
    _header(data, spec)
    _pm(data, 0x40, next_pointer=0x60)
    _pcie(data, 0x60, spec)
    extended = [(0x0001, _aer_body())]
    if spec.acs is not None:
        extended.append((ECAP_ID_ACS, struct.pack("<HH", *spec.acs)))
    if spec.ats_control is not None:
        extended.append((ECAP_ID_ATS, struct.pack("<HH", 0x0020, spec.ats_control)))
    if spec.sriov is not None:
        extended.append((ECAP_ID_SRIOV, _sriov_body(spec.sriov)))
    _extended_chain(data, extended)
    return bytes(data)


def _header(data: bytearray, spec: ConfigSpec) -> None:
    struct.pack_into("<HHHH", data, 0x00, spec.vendor_id, spec.device_id, 0x0546, 0x0010)
    struct.pack_into("<I", data, 0x08, (spec.class_code << 8) | spec.revision)
    header_type = (1 if spec.bridge else 0) | (0x80 if spec.multifunction else 0)
    data[0x0C] = 0x10  # cache line size: 64 bytes
    data[0x0E] = header_type
    data[0x34] = 0x40
    if spec.bridge:
        data[0x18:0x1B] = bytes([spec.primary_bus, spec.secondary_bus, spec.subordinate_bus])
    else:
        struct.pack_into("<HH", data, 0x2C, spec.subsystem_vendor_id, spec.subsystem_device_id)


def _pm(data: bytearray, offset: int, next_pointer: int) -> None:
    data[offset] = 0x01
    data[offset + 1] = next_pointer
    struct.pack_into("<H", data, offset + 2, 0x0003)


def _pcie(data: bytearray, offset: int, spec: ConfigSpec) -> None:
    data[offset] = 0x10
    data[offset + 1] = 0x00
    flags = 0x2 | (_PORT_TYPE_CODES[spec.port_type] << 4)
    devcap = _MPS_CODES[spec.max_payload_supported] | (1 << 28)  # FLR capable
    devctl = (0x000F | 0x0010 | 0x0800  # error reporting, relaxed ordering, no snoop
              | (_MPS_CODES[spec.max_payload] << 5) | (_MPS_CODES[spec.max_read_request] << 12))
    link = spec.link_speed | (spec.link_width << 4)
    struct.pack_into("<HHIHH", data, offset, 0x0010, flags, devcap, devctl, 0x0000)
    struct.pack_into("<I", data, offset + 0x0C, link)
    struct.pack_into("<HH", data, offset + 0x10, 0x0040, link)


def _aer_body() -> bytes:
    return bytes(0x44)


def _sriov_body(sriov: dict) -> bytes:
    body = bytearray(0x3C)
    control = 0x0009 if sriov.get("num_vfs") else 0x0000  # VF Enable + VF MSE
    struct.pack_into("<IHH", body, 0x00, 0, control, 0)
    struct.pack_into("<HHHBx", body, 0x08, sriov["total_vfs"], sriov["total_vfs"],
                     sriov.get("num_vfs", 0), 0)
    struct.pack_into("<HH", body, 0x10, sriov["vf_offset"], sriov["vf_stride"])
    struct.pack_into("<H", body, 0x16, sriov["vf_device_id"])
    return bytes(body)


def _extended_chain(data: bytearray, caps: list[tuple[int, bytes]]) -> None:
    """Lay the extended capabilities out from 0x100, each 16-byte aligned, linked in order."""
    offset = 0x100
    placed = []
    for cap_id, body in caps:
        placed.append((offset, cap_id, body))
        offset = (offset + 4 + len(body) + 15) & ~15
    for index, (offset, cap_id, body) in enumerate(placed):
        following = placed[index + 1][0] if index + 1 < len(placed) else 0
        struct.pack_into("<I", data, offset, cap_id | (1 << 16) | (following << 20))
        data[offset + 4: offset + 4 + len(body)] = body
