"""How the guest boots (a copy-on-write disk, or a kernel and initramfs) and its seed."""

from __future__ import annotations

from lxml.etree import Element, SubElement

from .spec import DomainSpec


def os(spec: DomainSpec) -> Element:
    element = Element("os")
    if spec.firmware == "efi":
        element.set("firmware", "efi")
    SubElement(element, "type", arch="x86_64", machine="q35").text = "hvm"
    if spec.kernel:
        SubElement(element, "kernel").text = spec.kernel
        SubElement(element, "initrd").text = spec.initrd
        SubElement(element, "cmdline").text = spec.cmdline or ""
    else:
        SubElement(element, "boot", dev="hd")
    return element


def _disk(path: str, target: str, fmt: str, readonly: bool) -> Element:
    disk = Element("disk", type="file", device="disk")
    SubElement(disk, "driver", name="qemu", type=fmt, cache="none" if fmt == "qcow2" else
               "default")
    SubElement(disk, "source", file=path)
    SubElement(disk, "target", dev=target, bus="virtio")
    if readonly:
        SubElement(disk, "readonly")
    return disk


def disks(spec: DomainSpec) -> list[Element]:
    elements = []
    targets = iter(["vda", "vdb"])
    if spec.disk:
        elements.append(_disk(spec.disk, next(targets), "qcow2", readonly=False))
    if spec.seed:
        elements.append(_disk(spec.seed, next(targets), "raw", readonly=True))
    return elements
