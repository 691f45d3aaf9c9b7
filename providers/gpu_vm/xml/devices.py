"""The rest of the devices: a management NIC on a libvirt network, a serial console logged to
a file (the lab reads it), and no balloon (huge-page backed memory must stay put)."""

from __future__ import annotations

from lxml.etree import Element, SubElement

from .spec import DomainSpec


def management_interface(spec: DomainSpec) -> Element:
    interface = Element("interface", type="network")
    SubElement(interface, "source", network=spec.network)
    SubElement(interface, "model", type="virtio")
    return interface


def console(spec: DomainSpec) -> list[Element]:
    serial = Element("serial", type="pty")
    if spec.console_log:
        SubElement(serial, "log", file=spec.console_log, append="off")
    SubElement(serial, "target", type="isa-serial", port="0")
    return [serial, Element("console", type="pty")]


def memballoon() -> Element:
    return Element("memballoon", model="none")
