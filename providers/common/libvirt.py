"""Reading libvirt domain XML for what vela needs from any domain: the host PCI functions it
passes through. SriovPool asks who holds its VFs; GpuVm which devices are taken."""

from __future__ import annotations

from lxml import etree

from ..errors import DomainXmlError


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


def parse(xml: str, uuid: str):
    """The definition of domain `uuid` (as `virsh dumpxml` gave it) parsed. Not XML is an
    error: what such a domain holds is unknown, and a plan that went on without it could take
    devices from under a running guest."""
    try:
        return etree.fromstring(xml.encode())
    except etree.XMLSyntaxError as exc:
        raise DomainXmlError(
            f"libvirt domain {uuid}: its XML (`virsh dumpxml {uuid}`) does not parse ({exc}), "
            f"so which devices it holds is unknown and vela stops here: look at that "
            f"domain on the host, fix or undefine it, then run `pulumi up` again") from None
