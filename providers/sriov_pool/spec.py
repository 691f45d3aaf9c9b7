"""SriovPool's inputs: one NIC port's virtual functions and their settings.

Keys are camelCase. The PF is named by interface or PCI address; each VF gets a MAC that is
stable for its cluster, node, port and index unless one is given, so a VF keeps its MAC across
re-creation and reboots and two clusters never collide. Values that reach `ip link`, sysfs or
virsh are validated here, before anything runs.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ..common.inputs import Inputs
from ..host.target import SshTarget
from ..validate import interface_name, pci_address

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _pf(value: str) -> str:
    text = str(value).strip()
    try:
        return pci_address(text)
    except ValueError:
        pass
    try:
        return interface_name(text)
    except ValueError:
        raise ValueError(f"{value!r} is neither a PCI address (0000:3b:00.0) nor an interface "
                         f"name (ens1f0np0)") from None


def _mac(value: str) -> str:
    text = str(value).strip().lower()
    if not _MAC.match(text):
        raise ValueError(f"{value!r} is not a MAC address (six hex pairs: 02:00:5e:10:00:01)")
    first = int(text[:2], 16)
    if first & 1:
        raise ValueError(f"{value!r} is a multicast address; a VF needs a unicast one")
    if text == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 means no MAC; give a real one or leave it out")
    return text


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r}: use lower-case letters, digits and '-' (at most 63)")
    return value


PfRef = Annotated[str, AfterValidator(_pf)]
Mac = Annotated[str, AfterValidator(_mac)]
Name = Annotated[str, AfterValidator(_name)]


class VfSettings(Inputs):
    """Settings of one VF (or of all, as the pool's defaults)."""

    mac: Mac | None = None
    trust: bool | None = None
    spoofchk: bool | None = None
    vlan: int | None = Field(default=None, ge=0, le=4094)
    qos: int | None = Field(default=None, ge=0, le=7)
    link_state: Literal["auto", "enable", "disable"] | None = None
    mtu: int | None = Field(default=None, ge=68, le=9216)  # host-driver VFs only


class VfOverride(VfSettings):
    index: int = Field(ge=0, le=255)


class Network(Inputs):
    """A libvirt network handing out the pool's VFs (`<forward mode='hostdev'>`)."""

    name: Name
    autostart: bool = True


class NicInfo(Inputs):
    """One NIC physical function as HostTuning reports it (its `nics` output)."""

    model_config = ConfigDict(extra="ignore")

    address: str
    interfaces: list[str] = Field(default_factory=list)
    sriov_total_vfs: int | None = None


class SriovPoolArgs(SshTarget):
    pf: PfRef
    num_vfs: int = Field(ge=0, le=256)
    mode: Literal["vm", "baremetal"] = "vm"
    driver: Literal["vfio-pci", "host"] = "vfio-pci"
    cluster: Name = "vela"
    node: Name | None = None  # default: the address
    defaults: VfSettings = Field(default_factory=lambda: VfSettings(
        trust=False, spoofchk=True, vlan=0, link_state="auto"))
    overrides: list[VfOverride] = Field(default_factory=list)  # per-VF settings
    ats: bool = True
    pf_mtu: int | None = Field(default=None, ge=68, le=9216)
    network: Network | None = None
    wait_timeout: int = Field(default=120, ge=5, le=1800)
    # How long a VF count change (or delete) waits for guests to let the VFs go before it
    # refuses: the engine may delete the guests at the same moment as the pool.
    release_timeout: int = Field(default=300, ge=0, le=3600)
    # What the host has, from HostTuning's `nics` output: lets check refuse an unknown port or
    # too many VFs before anything runs (create checks the live host again).
    nic_inventory: list[NicInfo] | None = None

    @field_validator("overrides")
    @classmethod
    def _unique(cls, value: list[VfOverride]) -> list[VfOverride]:
        indexes = [override.index for override in value]
        repeated = sorted({index for index in indexes if indexes.count(index) > 1})
        if repeated:
            raise ValueError(f"VF index(es) {repeated} are listed more than once")
        return value

    @model_validator(mode="after")
    def _known_port(self) -> SriovPoolArgs:
        if self.nic_inventory is None:
            return self
        nic = next((nic for nic in self.nic_inventory
                    if self.pf == nic.address or self.pf in nic.interfaces), None)
        if nic is None:
            known = ", ".join(f"{nic.address} ({' '.join(nic.interfaces) or 'no interface'})"
                              for nic in self.nic_inventory) or "none"
            raise ValueError(f"pf {self.pf!r} is not one of this host's NIC ports: {known}")
        if nic.sriov_total_vfs is not None and self.num_vfs > nic.sriov_total_vfs:
            raise ValueError(too_many_vfs(self.pf, self.num_vfs, nic.sriov_total_vfs))
        return self

    @model_validator(mode="after")
    def _mtu_needs_the_host_driver(self) -> SriovPoolArgs:
        if self.driver == "vfio-pci" and (self.defaults.mtu or any(o.mtu for o in self.overrides)):
            raise ValueError("mtu applies to VFs on the NIC's own VF driver (driver: host); a "
                             "vfio-pci VF's MTU is set by its guest (GpuVm's guest tuning)")
        return self

    @model_validator(mode="after")
    def _in_range(self) -> SriovPoolArgs:
        outside = [override.index for override in self.overrides
                   if override.index >= self.num_vfs]
        if outside:
            raise ValueError(f"settings for VF(s) {outside}, but numVfs is {self.num_vfs}")
        macs = [self.settings(index).mac for index in range(self.num_vfs)]
        repeated = sorted({mac for mac in macs if macs.count(mac) > 1})
        if repeated:
            raise ValueError(f"MAC(s) {repeated} given to more than one VF")
        return self

    def settings(self, index: int) -> VfSettings:
        """The effective settings of VF `index`: the pool's defaults, the VF's own on top,
        and a derived MAC where none was given."""
        merged = self.defaults.model_dump()
        for override in self.overrides:
            if override.index == index:
                merged.update({key: value for key, value in override.model_dump().items()
                               if value is not None and key != "index"})
        if not merged.get("mac"):
            merged["mac"] = derived_mac(self.cluster, self.node or self.address, self.pf, index)
        return VfSettings.model_validate(merged)


def derived_mac(cluster: str, node: str, pf: str, index: int) -> str:
    """A locally administered unicast MAC, stable for (cluster, node, pf, index)."""
    digest = hashlib.sha256(f"{cluster}/{node}/{pf}/{index}".encode()).digest()
    octets = [0x02, *digest[:5]]  # 0x02: locally administered, unicast
    return ":".join(f"{octet:02x}" for octet in octets)


def too_many_vfs(pf: str, wanted: int, total: int) -> str:
    return (f"{pf} offers at most {total} VFs (sriov_totalvfs), not {wanted}: on ConnectX the "
            f"NIC firmware's NUM_OF_VFS caps it (raise it, e.g. with HostTuning's "
            f"firmware.numVfs, and reboot); otherwise the device or its driver does")
