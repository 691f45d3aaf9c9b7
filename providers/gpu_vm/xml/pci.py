"""The guest PCIe tree mirroring the host's: expander buses, root ports, switches.

libvirt numbers PCI controllers by `index`, and a device's `<address bus=...>` names the index
of the controller it plugs into. Indexes start at 1 (pcie-root is 0). Each expander bus carries
its guest NUMA cell and its busNr; `<driver ats='on'/>` asks for ATS on each controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml.etree import Element, SubElement

from ..placement import Layout


@dataclass
class PciTree:
    controllers: list[Element] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)  # host address -> controller index
    next_index: int = 1


def _address(parent: Element, bus: int, slot: int = 0) -> None:
    SubElement(parent, "address", type="pci", domain="0x0000", bus=f"{bus:#04x}",
               slot=f"{slot:#04x}", function="0x0")


def _controller(tree: PciTree, model: str, name: str, bus: int, slot: int, ats: bool,
                chassis: bool = False) -> int:
    index = tree.next_index
    tree.next_index += 1
    element = Element("controller", type="pci", index=str(index), model=model)
    SubElement(element, "model", name=name)
    if chassis:
        SubElement(element, "target", chassis=str(index), port=f"{slot:#x}")
    if ats:
        SubElement(element, "driver", ats="on")
    _address(element, bus, slot)
    tree.controllers.append(element)
    return index


def pci_tree(layout: Layout, ats: bool) -> PciTree:
    tree = PciTree()
    for number, complex_ in enumerate(layout.complexes):
        pxb = _controller(tree, "pcie-expander-bus", "pxb-pcie", 0, 0x10 + number, ats)
        element = tree.controllers[-1]
        target = Element("target", busNr=str(complex_.bus_nr))
        SubElement(target, "node").text = str(complex_.cell)
        element.insert(1, target)
        for slot, port in enumerate(complex_.ports):
            root_port = _controller(tree, "pcie-root-port", "pcie-root-port", pxb, slot, ats,
                                    chassis=True)
            if not port.switch:
                tree.slots[port.devices[0].host_address] = root_port
                continue
            upstream = _controller(tree, "pcie-switch-upstream-port", "x3130-upstream",
                                   root_port, 0, ats)
            for down_slot, device in enumerate(port.devices):
                downstream = _controller(tree, "pcie-switch-downstream-port",
                                         "xio3130-downstream", upstream, down_slot, ats,
                                         chassis=True)
                tree.slots[device.host_address] = downstream
    return tree


def guest_address(parent: Element, bus_index: int) -> None:
    """Where a device plugs in: slot 0 of the controller with this index."""
    _address(parent, bus_index, 0)


def root_controller(ats: bool) -> Element:
    """pcie-root, with `<driver ats='on'/>` as IBM's sample has it on every PCI controller.

    libvirt's schema allows the driver element on any controller (it validates), and libvirt
    keeps it in the definition, but it reaches QEMU for no PCI controller: pcie-root has no
    -device at all (src/qemu/qemu_command.c qemuBuildSkipController skips it: it is the q35
    machine's own bus), and qemuBuildControllerPCIDevProps builds pxb-pcie, pcie-root-port,
    x3130-upstream and xio3130-downstream from model, bus_nr/numa_node or port/chassis/hotplug
    and id only; `ats` becomes a QEMU property only for virtio devices (qemuBuildVirtioDevProps,
    virtio-pci's "ats" bit). QEMU's root and switch ports have no ATS property to set: ATS is a
    capability of the endpoint (the passed-through GPU or VF exposes its own through VFIO), and
    the ports only forward its translated requests. So this is kept for fidelity with the
    sample and has no effect on the guest."""
    element = Element("controller", type="pci", index="0", model="pcie-root")
    if ats:
        SubElement(element, "driver", ats="on")
    return element
