"""A reader of `lspci -vvv` text, used as an independent oracle in tests.

lspci is the reference decoder of PCI config space; comparing what our byte decoder says with
what lspci printed for the same recorded bytes checks the decoder against real hardware data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PORT_TYPES = {
    "Endpoint": "endpoint", "Legacy Endpoint": "legacy_endpoint", "Root Port": "root_port",
    "Upstream Port": "upstream_port", "Downstream Port": "downstream_port",
    "Root Complex Integrated Endpoint": "rc_integrated_endpoint",
}
_ACS_NAMES = {
    "SrcValid": "source_validation", "TransBlk": "translation_blocking",
    "ReqRedir": "request_redirect", "CmpltRedir": "completion_redirect",
    "UpstreamFwd": "upstream_forwarding", "EgressCtrl": "egress_control",
    "DirectTrans": "direct_translated_p2p",
}


@dataclass
class LspciDevice:
    slot: str
    port_type: str | None = None
    max_read_request: int | None = None
    acs_supported: set[str] | None = None
    acs_enabled: set[str] | None = None
    ats_present: bool = False
    ats_enabled: bool | None = None
    sriov_total_vfs: int | None = None
    sriov_num_vfs: int | None = None
    sriov_vf_offset: int | None = None
    sriov_vf_stride: int | None = None
    sriov_vf_device: int | None = None
    numa_node: int | None = None
    driver: str | None = None
    extra: dict = field(default_factory=dict)


def _flags(text: str) -> set[str]:
    return {_ACS_NAMES[name] for name, sign in re.findall(r"(\w+)([+-])", text)
            if sign == "+" and name in _ACS_NAMES}


def parse_lspci_verbose(text: str) -> dict[str, LspciDevice]:
    devices: dict[str, LspciDevice] = {}
    current: LspciDevice | None = None
    in_devctl = False
    for raw in text.splitlines():
        line = raw.strip()
        header = re.match(r"^((?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ", raw)
        if header:
            current = devices.setdefault(header.group(1), LspciDevice(header.group(1)))
            continue
        if current is None:
            continue
        if match := re.search(r"Express \(v\d\) (.+?)(?: \(Slot[+-]\))?, (?:MSI|IntMsgNum)", line):
            current.port_type = _PORT_TYPES.get(match.group(1), match.group(1))
        in_devctl = line.startswith("DevCtl:") or (in_devctl and not re.match(r"^\w+:", line))
        if in_devctl and (match := re.search(r"MaxReadReq (\d+) bytes", line)):
            current.max_read_request = int(match.group(1))
        if line.startswith("ACSCap:"):
            current.acs_supported = _flags(line)
        elif line.startswith("ACSCtl:"):
            current.acs_enabled = _flags(line)
        elif "Address Translation Service (ATS)" in line:
            current.ats_present = True
        elif line.startswith("ATSCtl:"):
            current.ats_enabled = "Enable+" in line
        elif match := re.search(r"Total VFs: (\d+), Number of VFs: (\d+)", line):
            current.sriov_total_vfs, current.sriov_num_vfs = map(int, match.groups())
        elif match := re.search(r"VF offset: (\d+), stride: (\d+), Device ID: ([0-9a-f]+)", line):
            current.sriov_vf_offset, current.sriov_vf_stride = int(match[1]), int(match[2])
            current.sriov_vf_device = int(match[3], 16)
        elif match := re.match(r"NUMA node: (\d+)", line):
            current.numa_node = int(match.group(1))
        elif match := re.match(r"Kernel driver in use: (\S+)", line):
            current.driver = match.group(1)
    return devices


_DUMP_LINE = re.compile(r"^([0-9a-f]{2,3}): ((?:[0-9a-f]{2} ?){1,16})$")


def parse_lspci_hex_dump(text: str) -> dict[str, bytes]:
    """The recorded config bytes, for the decoder's tests: parse `lspci -xxx`/`-xxxx` output
    into slot as printed -> config bytes.

    Each device block starts with a line like `01:00.0 Ethernet controller: ...` and its hex
    lines look like `a0: 00 11 ...`. Other lines (the -vvv decode) are ignored.
    """
    dumps: dict[str, bytearray] = {}
    current: bytearray | None = None
    slot = re.compile(r"^((?:[0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ")
    for raw in text.splitlines():
        line = raw.rstrip()
        header = slot.match(line)
        if header:
            current = dumps.setdefault(header.group(1), bytearray())
            continue
        match = _DUMP_LINE.match(line)
        if match and current is not None:
            offset = int(match.group(1), 16)
            chunk = bytes.fromhex(match.group(2))
            if offset != len(current):
                raise ValueError(f"hex dump line at offset {offset:#x} follows {len(current):#x}")
            current += chunk
    return {key: bytes(value) for key, value in dumps.items()}
