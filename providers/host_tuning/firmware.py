"""ConnectX NIC firmware settings through mlxconfig (NVIDIA MFT) or mstconfig (mstflint).

Pure parsers of the tools' output and the recipe's settings. Both tools print the same format:

    Device #1:
    ----------
    Device type:    ConnectX6
    ...
    Configurations:                              Default         Current         Next Boot
    *        SRIOV_EN                            False(0)        False(0)        True(1)
             NUM_OF_VFS                          0               0               8

`-e` asks for the Default/Current/Next Boot columns (without it some versions print only one
value column); a leading `*` marks a value changed from its default. A change made with `set`
lands in "Next Boot" and becomes "Current" only after a reboot (a firmware reset). Some
parameters appear only when another is active: MAX_ACC_OUT_READ needs ADVANCED_PCI_SETTINGS
to be True in "Current", so setting both takes two reboots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ADVANCED_PCI_SETTINGS = "ADVANCED_PCI_SETTINGS"
MAX_ACC_OUT_READ = "MAX_ACC_OUT_READ"
# The order the recipe applies them in (and the order `set` gets them).
RECIPE_ORDER = [ADVANCED_PCI_SETTINGS, MAX_ACC_OUT_READ, "PCI_WR_ORDERING", "P2P_ORDERING_MODE",
                "ATS_ENABLED", "RDMA_SELECTIVE_REPEAT_EN", "SRIOV_EN", "NUM_OF_VFS"]
# Parameters only visible (and settable) once another is active in "Current".
REQUIRES_ACTIVE = {MAX_ACC_OUT_READ: (ADVANCED_PCI_SETTINGS, 1)}
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def recipe_settings(mode: str, num_vfs: int) -> dict[str, int]:
    """Vela's ConnectX settings. vm: ATS on, writes ordered per memory key (NCCL asks for
    relaxed ordering per region); baremetal: ATS off (NVIDIA's own NIC operator forces it off
    without VMs) and relaxed ordering forced on for GPUDirect RDMA."""
    vm = mode == "vm"
    return {
        ADVANCED_PCI_SETTINGS: 1,
        MAX_ACC_OUT_READ: 44,
        "PCI_WR_ORDERING": 0 if vm else 1,
        "P2P_ORDERING_MODE": 1,
        "ATS_ENABLED": 1 if vm else 0,
        "RDMA_SELECTIVE_REPEAT_EN": 1,
        "SRIOV_EN": 1 if num_vfs > 0 else 0,
        "NUM_OF_VFS": num_vfs,
    }


class FirmwareOutputError(ValueError):
    pass


@dataclass
class Param:
    """One parameter's values. Values are the numbers in `True(1)`-style text (None if absent)."""

    name: str
    default: int | None = None
    current: int | None = None
    next_boot: int | None = None
    text: dict[str, str] = field(default_factory=dict)  # column -> raw text
    modified: bool = False

    @property
    def pending(self) -> bool:
        return self.next_boot is not None and self.current is not None \
            and self.next_boot != self.current


@dataclass
class FirmwareDevice:
    device_type: str = ""
    name: str = ""
    description: str = ""
    device: str = ""
    params: dict[str, Param] = field(default_factory=dict)
    truncated: bool = False  # the output was cut ("..."): absent parameters are unknown


def parse_value(text: str) -> int | None:
    """`True(1)` -> 1, `per_mkey(0)` -> 0, `44` -> 44, `0x10` -> 16; anything else -> None."""
    text = text.strip()
    match = re.fullmatch(r"[^()\s]*\((-?\d+)\)", text)
    if match:
        return int(match.group(1))
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        return int(text, 16)
    return None


def parse_query(text: str) -> list[FirmwareDevice]:
    """Parse `mlxconfig|mstconfig -d DEV [-e] q` output (one or more devices)."""
    devices: list[FirmwareDevice] = []
    current: FirmwareDevice | None = None
    columns: list[str] = []
    in_table = False
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if re.match(r"^Device #\d+:", stripped):
            current = FirmwareDevice()
            devices.append(current)
            in_table, columns = False, []
            continue
        if current is None:
            continue
        if stripped.startswith("-E-"):
            raise FirmwareOutputError(stripped)
        header = re.match(r"^(Device type|Name|Description|Device):\s*(.*)$", stripped)
        if header and not in_table:
            key = {"Device type": "device_type"}.get(header.group(1), header.group(1).lower())
            setattr(current, key, header.group(2).strip())
            continue
        if stripped.startswith("Configurations:"):
            in_table = True
            columns = _columns(stripped[len("Configurations:"):])
            continue
        if in_table and stripped == "...":
            current.truncated = True
            continue
        if in_table and stripped:
            param = _param_line(stripped, columns)
            if param is not None:
                current.params[param.name] = param
    if not devices:
        raise FirmwareOutputError("no 'Device #N:' block in the output")
    return devices


def _columns(header: str) -> list[str]:
    names = re.findall(r"Default|Current|Next Boot|New", header)
    return names or ["Next Boot"]  # some versions print no column header for one column


def _param_line(line: str, columns: list[str]) -> Param | None:
    modified = line.startswith("*")
    parts = line.lstrip("*").split()
    if not parts or not _NAME.match(parts[0]):
        return None
    name, values = parts[0], parts[1:]
    if len(values) != len(columns):
        # One value column and no header: the value is the Next Boot one.
        if len(values) == 1:
            columns = ["Next Boot"]
        else:
            raise FirmwareOutputError(f"{name}: {len(values)} values for columns {columns}")
    param = Param(name=name, modified=modified, text=dict(zip(columns, values, strict=True)))
    for column, value in zip(columns, values, strict=True):
        number = parse_value(value)
        if column == "Default":
            param.default = number
        elif column == "Current":
            param.current = number
        elif column in ("Next Boot", "New"):
            param.next_boot = number
    return param


def set_arguments(values: dict[str, int]) -> list[str]:
    """NAME=VALUE arguments of a non-interactive `set`, in recipe order."""
    ordered = sorted(values, key=lambda name: (RECIPE_ORDER.index(name)
                                               if name in RECIPE_ORDER else len(RECIPE_ORDER),
                                               name))
    return [f"{name}={values[name]}" for name in ordered]
