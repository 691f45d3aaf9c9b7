"""Turn the output of gather.sh into `HostFacts`. Pure functions, no I/O.

Records are `KIND <TAB> SUBJECT <TAB> FIELD <TAB> VALUE`. Unknown records are ignored (a newer
script may add some); a missing end marker means the output was cut and is an error.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
import zlib
from collections import defaultdict

from .models import (
    GPU_HOLDERS,
    HostFacts,
    HugePagePool,
    Iommu,
    NumaNode,
    PciDevice,
    VirtualFunction,
)
from .pciconfig import decode

FORMAT_VERSION = "1"
_BDF = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_ROOT_COMPLEX = re.compile(r"^pci[0-9a-f]{4,8}:[0-9a-f]{2}$")


class GatherOutputError(ValueError):
    """The gather output is cut short or malformed."""


def parse_cpulist(text: str) -> list[int]:
    """`0-3,8,10-11` -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def _int(text: str, base: int = 10) -> int | None:
    try:
        return int(text.strip(), base)
    except ValueError:
        return None


def parse_gather_output(text: str) -> HostFacts:
    records = _records(text)
    facts = HostFacts()
    iommu = Iommu()
    nodes: dict[int, NumaNode] = {}
    attributes: dict[str, dict[str, str]] = defaultdict(dict)
    nets: dict[str, list[str]] = defaultdict(list)
    links: dict[str, dict[str, str]] = defaultdict(dict)
    configs: dict[str, str] = {}
    for kind, subject, field, value in records:
        if kind == "host" and field in {"hostname", "kernel", "cmdline", "cpu_vendor"}:
            setattr(facts, field, value)
        elif kind == "host" and field == "address_sizes":
            facts.physical_address_bits = _int(value.split()[0]) if value.split() else None
        elif kind == "host":
            _host(facts, field, value)
        elif kind == "meminfo":
            _meminfo(facts, field, value)
        elif kind == "iommu":
            _iommu(iommu, field, value)
        elif kind == "node":
            _node(nodes.setdefault(int(subject), NumaNode(id=int(subject), cpus=[])), field,
                  value)
        elif kind == "pci" and field == "net":
            nets[subject].append(value)
        elif kind == "pci" and subject == "-":
            configs[field] = value
        elif kind == "pci":
            attributes[subject][field] = value
        elif kind == "pcilink":
            links[posixpath.basename(subject.rstrip("/"))][field] = value
    facts.iommu = iommu
    facts.numa_nodes = [nodes[key] for key in sorted(nodes)]
    if "config_changing" in configs:
        raise GatherOutputError(
            f"the host's PCI functions kept changing while vela read them "
            f"({configs['config_changing']} readings a second apart: VFs created or removed by "
            f"another operation?); run again once it is done")
    spaces = _config_spaces(configs.get("config_order", ""), configs.get("config_gzip", ""))
    facts.pci = {address: _device(address, attributes[address], links.get(address, {}),
                                  sorted(nets.get(address, [])), spaces.get(address))
                 for address in sorted(attributes) if _BDF.match(address)}
    return facts


def _records(text: str) -> list[tuple[str, str, str, str]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        parts = line.split("\t", 3)
        if len(parts) != 4:
            raise GatherOutputError(f"line {number} of the facts output is malformed: {line!r}")
        records.append((parts[0], parts[1], parts[2], parts[3]))
    meta = {field: value for kind, _, field, value in records if kind == "meta"}
    if meta.get("format") != FORMAT_VERSION:
        raise GatherOutputError(f"facts output has format {meta.get('format')!r}, expected "
                                f"{FORMAT_VERSION!r}")
    if meta.get("end") != "ok":
        raise GatherOutputError("facts output was cut short (no end marker)")
    return records


def _host(facts: HostFacts, field: str, value: str) -> None:
    if field == "cpu_flags":
        facts.cpu_flags = value.split()
    elif field == "kvm_device":
        facts.kvm_device = value == "yes"
    elif field == "lockdown":
        facts.lockdown = _bracketed(value)
    elif field == "gpu_holders":
        facts.gpu_holders = sorted({GPU_HOLDERS[name] for name in value.split()
                                    if name in GPU_HOLDERS})


def _bracketed(value: str) -> str | None:
    """The selected word of a sysfs choice list (`none [integrity] confidentiality`)."""
    match = re.search(r"\[([^\]]+)\]", value)
    return match[1] if match else None


def _meminfo(facts: HostFacts, field: str, value: str) -> None:
    if field == "MemTotal":
        facts.memory_kib = _int(value)
    elif field == "Hugepagesize":
        facts.default_hugepage_kib = _int(value)


def _iommu(iommu: Iommu, field: str, value: str) -> None:
    if field == "acpi_table" and iommu.acpi_table is None:
        iommu.acpi_table = value
    elif field == "unit":
        iommu.units.append(value)
    elif field == "groups":
        iommu.groups = _int(value) or 0


def _node(node: NumaNode, field: str, value: str) -> None:
    if field == "cpulist":
        node.cpus = parse_cpulist(value)
    elif field == "memtotal_kib":
        node.memory_kib = _int(value)
    elif field == "hugepages":
        size, total, free = (value.split() + ["", "", ""])[:3]
        node.hugepages.append(HugePagePool(size_kib=_int(size) or 0, total=_int(total) or 0,
                                           free=_int(free) or 0))
        node.hugepages.sort(key=lambda pool: pool.size_kib)


def _config_spaces(order: str, encoded: str) -> dict[str, bytes]:
    """Split the gzip stream (one member per function, in `order`) into config spaces."""
    addresses = order.split()
    if not addresses:
        return {}
    try:
        stream = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GatherOutputError(f"config space data is not base64: {exc}") from exc
    spaces: dict[str, bytes] = {}
    for address in addresses:
        member = zlib.decompressobj(wbits=31)  # one gzip member
        try:
            spaces[address] = member.decompress(stream)
        except zlib.error as exc:
            raise GatherOutputError(f"config space of {address} is corrupt: {exc}") from exc
        if not member.eof:
            raise GatherOutputError(f"config space data ends before {address}")
        stream = member.unused_data
    return spaces


def _device(address: str, attrs: dict[str, str], links: dict[str, str],
            net: list[str], config: bytes | None) -> PciDevice:
    numa = _int(attrs.get("numa_node", ""))
    root_complex, upstream = _tree_position(address, attrs.get("sysfs_path", ""))
    virtfns = sorted(
        (VirtualFunction(index=int(name[len("virtfn"):]), address=posixpath.basename(target))
         for name, target in links.items() if name.startswith("virtfn")
         and name[len("virtfn"):].isdigit()),
        key=lambda vf: vf.index)
    return PciDevice(
        address=address,
        vendor_id=_int(attrs.get("vendor", ""), 16) or 0,
        device_id=_int(attrs.get("device", ""), 16) or 0,
        class_code=_int(attrs.get("class", ""), 16) or 0,
        subsystem_vendor_id=_int(attrs.get("subsystem_vendor", ""), 16),
        subsystem_device_id=_int(attrs.get("subsystem_device", ""), 16),
        driver=posixpath.basename(links["driver"]) if "driver" in links else None,
        driver_override=_override(attrs.get("driver_override")),
        numa_node=numa if numa is not None and numa >= 0 else None,
        iommu_group=_int(posixpath.basename(links.get("iommu_group", ""))),
        root_complex=root_complex,
        upstream=upstream,
        sriov_totalvfs=_int(attrs.get("sriov_totalvfs", "")),
        sriov_numvfs=_int(attrs.get("sriov_numvfs", "")),
        physfn=posixpath.basename(links["physfn"]) if "physfn" in links else None,
        virtfns=virtfns,
        net=net,
        bars=[_int(size) or 0 for size in attrs.get("bars", "").split(",") if size],
        caps=decode(config) if config is not None and len(config) >= 0x40 else None,
    )


def _override(value: str | None) -> str | None:
    return None if value in (None, "", "(null)") else value


def _tree_position(address: str, sysfs_path: str) -> tuple[str | None, list[str]]:
    """From `../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0` take the root complex and
    the bridges above the device (root port first)."""
    parts = [part for part in sysfs_path.split("/") if part]
    complexes = [part for part in parts if _ROOT_COMPLEX.match(part)]
    functions = [part for part in parts if _BDF.match(part)]
    if functions and functions[-1] == address:
        functions = functions[:-1]
    return (complexes[-1] if complexes else None), functions
