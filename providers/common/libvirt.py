"""Reading libvirt domain XML for what vela needs from any domain: the host PCI functions it
passes through. SriovPool asks who holds its VFs; GpuVm which devices are taken."""

from __future__ import annotations

from lxml import etree


def source_address(element) -> str | None:
    """A `<source><address domain= bus= slot= function=/>` as a PCI address (None: not one)."""
    try:
        return (f"{int(element.get('domain'), 16):04x}:{int(element.get('bus'), 16):02x}:"
                f"{int(element.get('slot'), 16):02x}.{int(element.get('function'), 16):x}")
    except (TypeError, ValueError):
        return None


def passthrough_addresses(root) -> list[str]:
    """The host PCI functions a parsed domain definition passes through, in document order."""
    found = (source_address(source) for source in root.iterfind(".//devices/*/source/address"))
    return [address for address in found if address is not None]


def parse(xml: str):
    """A domain definition parsed (None: not XML)."""
    try:
        return etree.fromstring(xml.encode())
    except etree.XMLSyntaxError:
        return None
