"""Device selectors: how a stack names the PCI functions a resource acts on.

A selector is a preset name, `vendor:device` in hex (`10de:*` for any device of a vendor), or a
PCI address. HostTuning and GpuVm both select with these; the rules live here once.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from ..facts.models import PciDevice
from ..validate import pci_address

# Named device sets, so a stack can say what it means instead of spelling ids.
PRESETS: dict[str, list[tuple[int, int | None, int | None]]] = {
    # (vendor, device or None, class prefix (16 bits: base class and subclass) or None)
    # NVIDIA GPUs are display controllers (base class 03, include/linux/pci_ids.h): 3D
    # controllers (0302: A100, H100, ...) and, for cards with display outputs, VGA compatible
    # controllers (0300: L40S, RTX 6000 Ada, ...). Not their HD Audio function (0403), which
    # goes to vfio-pci only as an IOMMU group companion, nor NVSwitch (0680, below).
    "nvidia-gpu": [(0x10DE, None, 0x0300), (0x10DE, None, 0x0302)],
    "nvidia-nvswitch": [(0x10DE, None, 0x0680)],  # NVSwitch bridges on HGX baseboards
    "connectx": [(0x15B3, None, 0x0200), (0x15B3, None, 0x0207)],  # Ethernet / InfiniBand
}
_VENDOR_DEVICE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4}|\*)$")


def _selector(value: str) -> str:
    text = str(value).strip().lower()
    if text in PRESETS or _VENDOR_DEVICE.match(text):
        return text
    try:
        return pci_address(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a known device: use a preset ({', '.join(sorted(PRESETS))}), "
            f"vendor:device in hex (10de:20b2, or 10de:* for any device of a vendor), or a PCI "
            f"address (0000:3b:00.0)") from None


DeviceSelector = Annotated[str, AfterValidator(_selector)]


def matches(selector: str, device: PciDevice) -> bool:
    """Does one selector (already validated) pick this PCI function?"""
    if selector in PRESETS:
        return any(device.vendor_id == vendor and (dev is None or device.device_id == dev)
                   and (cls is None or device.class_code >> 8 == cls)
                   for vendor, dev, cls in PRESETS[selector])
    match = _VENDOR_DEVICE.match(selector)
    if match:
        return device.vendor_id == int(match.group(1), 16) and (
            match.group(2) == "*" or device.device_id == int(match.group(2), 16))
    return device.address == selector
