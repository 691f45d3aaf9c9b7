"""vCPUs pinned 1:1, the emulator's CPUs, guest NUMA cells, CPU model and address bits."""

from __future__ import annotations

from lxml.etree import Element, SubElement

from ..placement import Layout
from .spec import DomainSpec


def _cpuset(cpus: list[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def vcpu(layout: Layout) -> Element:
    element = Element("vcpu", placement="static")
    element.text = str(layout.vcpus)
    return element


def cputune(layout: Layout) -> Element:
    tune = Element("cputune")
    for cell in layout.cells:
        for guest, host in zip(cell.vcpus, cell.host_cpus, strict=True):
            SubElement(tune, "vcpupin", vcpu=str(guest), cpuset=str(host))
    if layout.emulator_cpus:
        SubElement(tune, "emulatorpin", cpuset=_cpuset(layout.emulator_cpus))
    return tune


def cpu(spec: DomainSpec, layout: Layout) -> Element:
    if spec.cpu_model == "host-passthrough":
        element = Element("cpu", mode="host-passthrough", check="none", migratable="off")
    else:
        element = Element("cpu", mode="custom", match="exact", check="none")
        SubElement(element, "model", fallback="forbid").text = spec.cpu_model
    vcpus = layout.vcpus
    sockets = len(layout.cells)
    if vcpus % sockets == 0:
        SubElement(element, "topology", sockets=str(sockets), dies="1",
                   cores=str(vcpus // sockets), threads="1")
    if spec.phys_bits_mode == "passthrough":
        SubElement(element, "maxphysaddr", mode="passthrough", limit=str(layout.phys_bits))
    elif spec.phys_bits_mode == "emulate":
        SubElement(element, "maxphysaddr", mode="emulate", bits=str(layout.phys_bits))
    numa = SubElement(element, "numa")
    for cell in layout.cells:
        SubElement(numa, "cell", id=str(cell.id), cpus=_range(cell.vcpus),
                   memory=str(cell.memory_kib), unit="KiB")
    return element


def _range(values: list[int]) -> str:
    return f"{values[0]}-{values[-1]}" if len(values) > 1 else str(values[0])
