"""The whole domain: placement plus spec in, one `<domain>` element out. Pure."""

from __future__ import annotations

from lxml.etree import Element, SubElement, tostring

from ..placement import Layout
from . import cpu, devices, hostdev, memory, pci, storage
from .spec import DomainSpec


def domain(spec: DomainSpec, layout: Layout) -> Element:
    root = Element("domain", type=spec.domain_type)
    SubElement(root, "name").text = spec.name
    if spec.uuid:
        SubElement(root, "uuid").text = spec.uuid
    SubElement(root, "metadata").append(_vela_metadata(spec))
    for element in memory.memory(layout):
        root.append(element)
    backing = memory.memory_backing(spec)
    if backing is not None:
        root.append(backing)
    root.append(cpu.vcpu(layout))
    root.append(cpu.cputune(layout))
    root.append(memory.numatune(layout))
    root.append(storage.os(spec))
    features = SubElement(root, "features")
    SubElement(features, "acpi")
    SubElement(features, "apic")
    root.append(cpu.cpu(spec, layout))
    SubElement(root, "clock", offset="utc")
    SubElement(root, "on_poweroff").text = "destroy"
    SubElement(root, "on_reboot").text = "restart"
    SubElement(root, "on_crash").text = "destroy"
    root.append(_devices(spec, layout))
    return root


def _devices(spec: DomainSpec, layout: Layout) -> Element:
    element = Element("devices")
    for disk in storage.disks(spec):
        element.append(disk)
    element.append(pci.root_controller())
    tree = pci.pci_tree(layout, spec.ats_on_controllers)
    for controller in tree.controllers:
        element.append(controller)
    element.append(devices.management_interface(spec))
    for device in layout.devices:
        element.append(hostdev.hostdev(device, tree.slots[device.host_address]))
    for part in devices.console(spec):
        element.append(part)
    element.append(devices.memballoon())
    return element


VELA_NS = "https://vela.invalid/libvirt/domain/1"


def _vela_metadata(spec: DomainSpec) -> Element:
    """A marker that this domain is vela's (read and delete refuse anything else)."""
    element = Element(f"{{{VELA_NS}}}owner", nsmap={"vela": VELA_NS})
    element.set("resource", "GpuVm")
    return element


def render(element: Element) -> str:
    return tostring(element, pretty_print=True, encoding="unicode")
