"""HostTuning's inputs: what a user asks of one hypervisor host, validated before anything runs.

Keys are camelCase, as a Pulumi program writes them. Every setting has the recipe's default;
the values that depend on `mode` (ACS control, ATS, NIC write ordering) are resolved by the
planner, not here, except `vfio`, which is resolved here: `mode: baremetal` means the host runs
its jobs itself, with no VMs, so its GPUs stay with their host driver. The private key is not
an input: it comes from provider configuration (`vela:sshPrivateKey`, a secret) so it never
lands in state.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..common.inputs import Inputs
from ..common.selectors import DeviceSelector
from ..host.target import SshTarget
from ..validate import absolute_path

_SYSCTL = re.compile(r"^[a-z0-9_]+(?:[./][a-z0-9_-]+)+$")
_FIRMWARE_PARAM = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")


class HugePages(Inputs):
    """Huge pages to reserve: a total (the kernel spreads it over the nodes) or per NUMA node."""

    size: Literal["1G", "2M"] = "1G"
    total: int | None = Field(default=None, ge=0, le=65536)
    per_node: dict[int, Annotated[int, Field(ge=0, le=65536)]] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> HugePages:
        if (self.total is None) == (self.per_node is None):
            raise ValueError("give either total or perNode (for example total: 16, or "
                             "perNode: {0: 8, 1: 8})")
        return self

    @property
    def size_kib(self) -> int:
        return 1048576 if self.size == "1G" else 2048


class Firmware(Inputs):
    """ConnectX firmware settings (mlxconfig or mstconfig)."""

    enabled: bool | None = None  # None: for the selected NICs made by Mellanox/NVIDIA
    tool: str = "auto"  # auto: mlxconfig, else mstconfig, from PATH; or an absolute path
    num_vfs: int = Field(default=8, ge=0, le=127)
    settings: dict[str, Annotated[int, Field(ge=0, le=0xFFFF)]] = Field(default_factory=dict)

    @field_validator("tool")
    @classmethod
    def _tool(cls, value: str) -> str:
        return value if value == "auto" else absolute_path(value, "firmware tool path")

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            if not _FIRMWARE_PARAM.match(name):
                raise ValueError(f"{name!r} is not a firmware parameter name (upper case, "
                                 f"as `mlxconfig q` lists them, e.g. NUM_OF_VFS)")
        return value


def _sysctls(value: dict[str, str]) -> dict[str, str]:
    for name, setting in value.items():
        if not _SYSCTL.match(name):
            raise ValueError(f"{name!r} is not a sysctl name (like net.core.rmem_max)")
        if not re.fullmatch(r"[A-Za-z0-9 ._:/-]{1,200}", str(setting)):
            raise ValueError(f"sysctl {name}: {setting!r} has characters a sysctl value does "
                             f"not need (use letters, digits, spaces and ._:/-)")
    return {name: str(setting) for name, setting in value.items()}


class HostTuningArgs(SshTarget):
    """Everything HostTuning does to one host; each setting defaults to the recipe."""

    mode: Literal["vm", "baremetal"] = "vm"
    iommu_passthrough: bool = True
    # What to pass through (GPUs, NVSwitch bridges) and which NICs pair with them.
    gpu_selector: list[DeviceSelector] = Field(
        default_factory=lambda: ["nvidia-gpu", "nvidia-nvswitch"])
    nic_selector: list[DeviceSelector] = Field(default_factory=lambda: ["connectx"])
    # Bind the GPUs to vfio-pci for VMs. None: as the mode says (vm: yes, baremetal: no).
    vfio: bool | None = None
    blacklist_nouveau: bool = True
    hugepages: HugePages | None = None
    acs: bool = True
    # No `ats`: a VF's ATS is SriovPool's (it makes the VFs, at boot too, after this unit).
    # false leaves Max Read Request alone (null cannot: Pulumi drops null inputs).
    max_read_request: Literal[128, 256, 512, 1024, 2048, 4096, False] = 4096
    firmware: Firmware = Field(default_factory=Firmware)
    sysctls: Annotated[dict[str, str], AfterValidator(_sysctls)] = Field(default_factory=dict)
    reboot: Literal["never", "allowed"] = "never"
    reboot_timeout: int = Field(default=900, ge=60, le=7200)
    # A reboot stops vela's running guests gracefully and starts them again; a running guest
    # vela did not make stops the reboot, unless this says the reboot may take it down.
    reboot_with_other_guests: bool = False

    @field_validator("vfio")
    @classmethod
    def _no_vms_on_bare_metal(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("mode") == "baremetal":
            raise ValueError(
                "vfio: true binds the GPUs to vfio-pci for VMs, but mode: baremetal runs the "
                "jobs on the host itself, with no VMs: its GPUs need their own driver, and its "
                "ACS setting (0 on the GPU-NIC paths, for GPUDirect) leaves them without the "
                "IOMMU isolation passthrough needs. Leave vfio out (or false) for bare metal, or "
                "set mode: vm to run VMs")
        return value

    @model_validator(mode="after")
    def _vfio_follows_the_mode(self) -> HostTuningArgs:
        if self.vfio is None:
            self.vfio = self.mode == "vm"
        return self

    @field_validator("gpu_selector")
    @classmethod
    def _some_gpus(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("select at least one GPU (the default is nvidia-gpu and "
                             "nvidia-nvswitch)")
        return value
