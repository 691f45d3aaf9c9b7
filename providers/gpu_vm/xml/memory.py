"""Memory: size, 1 GiB huge page backing, strict per-cell NUMA placement."""

from __future__ import annotations

from lxml.etree import Element, SubElement

from ..placement import Layout
from .spec import DomainSpec


def memory(layout: Layout) -> list[Element]:
    size = Element("memory", unit="KiB")
    size.text = str(layout.memory_kib)
    current = Element("currentMemory", unit="KiB")
    current.text = str(layout.memory_kib)
    return [size, current]


def memory_backing(spec: DomainSpec) -> Element | None:
    if not spec.hugepage_kib:
        return None
    backing = Element("memoryBacking")
    pages = SubElement(backing, "hugepages")
    SubElement(pages, "page", size=str(spec.hugepage_kib), unit="KiB")
    return backing


def numatune(layout: Layout) -> Element:
    tune = Element("numatune")
    nodes = ",".join(str(cell.host_node) for cell in layout.cells)
    SubElement(tune, "memory", mode="strict", nodeset=nodes)
    for cell in layout.cells:
        SubElement(tune, "memnode", cellid=str(cell.id), mode="strict",
                   nodeset=str(cell.host_node))
    return tune
