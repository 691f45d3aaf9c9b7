"""GPUs and VFs as managed PCI hostdevs (libvirt binds them to vfio-pci and back); VFs as
`<interface type='hostdev'>` so their MAC is applied through the PF before the guest starts."""

from __future__ import annotations

from lxml.etree import Element, SubElement

from ..placement import GuestDevice
from .pci import guest_address


def _source_address(parent: Element, host_address: str, with_type: bool) -> None:
    domain, bus, rest = host_address.split(":")
    slot, function = rest.split(".")
    attributes = {"type": "pci"} if with_type else {}
    SubElement(parent, "address", **attributes, domain=f"0x{domain}", bus=f"0x{bus}",
               slot=f"0x{slot}", function=f"0x{function}")


def hostdev(device: GuestDevice, bus_index: int) -> Element:
    if device.kind == "vf" and device.mac:
        element = Element("interface", type="hostdev", managed="yes")
        SubElement(element, "mac", address=device.mac)
        source = SubElement(element, "source")
        _source_address(source, device.host_address, with_type=True)
    else:
        element = Element("hostdev", mode="subsystem", type="pci", managed="yes")
        SubElement(element, "driver", name="vfio")
        source = SubElement(element, "source")
        _source_address(source, device.host_address, with_type=False)
    guest_address(element, bus_index)
    return element
