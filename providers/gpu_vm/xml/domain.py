"""The whole domain: placement plus spec in, one `<domain>` element out. Pure."""

from __future__ import annotations

from lxml.etree import Element, SubElement, tostring

from ...common.domains import VELA_NS
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
    root.append(clock())
    SubElement(root, "on_poweroff").text = "destroy"
    SubElement(root, "on_reboot").text = "restart"
    SubElement(root, "on_crash").text = "destroy"
    root.append(power_management())
    root.append(_devices(spec, layout))
    return root


def clock() -> Element:
    """IBM's sample clock, the one virt-manager gives x86 guests too: the RTC catches up on
    ticks a descheduled guest missed (QEMU -rtc driftfix=slew), the PIT delays them (with the
    in-kernel PIT, -global kvm-pit.lost_tick_policy=delay), no HPET (-machine hpet=off or
    -no-hpet); libvirt src/qemu/qemu_command.c qemuBuildClockArgStr and
    qemuBuildClockCommandLine. libvirt takes all three for kvm and qemu (TCG) domains alike:
    the refusals in src/qemu/qemu_validate.c qemuValidateDomainDefClockTimers (rtc track boot,
    rtc tickpolicy merge or discard, pit catchup without kvm-pit, pit merge, an hpet outside
    x86) do not look at the domain type. Under TCG there is no kvm-pit, and QEMU leaves the
    -global for it unused without complaint: checked with Debian 12's QEMU 7.2 (the lab's)
    under TCG, which also takes -no-hpet and hpet=off."""
    element = Element("clock", offset="utc")
    SubElement(element, "timer", name="rtc", tickpolicy="catchup")
    SubElement(element, "timer", name="pit", tickpolicy="delay")
    SubElement(element, "timer", name="hpet", present="no")
    return element


def power_management() -> Element:
    """No S3 or S4 in the guest, as in IBM's sample: a training guest has no use for sleep
    states, and one that suspended itself would stop its GPUs' work while still holding them
    and its huge pages. libvirt qemuBuildPMCommandLine turns these into -global
    ICH9-LPC.disable_s3=1 and disable_s4=1 on q35, whatever the domain type."""
    element = Element("pm")
    SubElement(element, "suspend-to-mem", enabled="no")
    SubElement(element, "suspend-to-disk", enabled="no")
    return element


def _devices(spec: DomainSpec, layout: Layout) -> Element:
    element = Element("devices")
    for disk in storage.disks(spec):
        element.append(disk)
    element.append(pci.root_controller(spec.ats_on_controllers))
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


def _vela_metadata(spec: DomainSpec) -> Element:
    """A marker that this domain is vela's (read and delete refuse anything else), with how
    long its graceful shutdown may take (HostTuning reads it before a host reboot)."""
    element = Element(f"{{{VELA_NS}}}owner", nsmap={"vela": VELA_NS})
    element.set("resource", "GpuVm")
    element.set("shutdownTimeout", str(spec.shutdown_timeout))
    return element


def render(element: Element) -> str:
    return tostring(element, pretty_print=True, encoding="unicode")
