"""Checks that must pass before HostTuning writes anything. Pure.

BIOS settings cannot be read from Linux, only their effects: an ACPI DMAR/IVRS table for the
IOMMU, an SR-IOV capability on the NIC, an ACS capability on the PCIe ports between a GPU and
its NIC. When an effect is missing the message names the BIOS option to turn on.
"""

from __future__ import annotations

from ..facts.models import HostFacts
from .firmware import REQUIRES_ACTIVE
from .observe import GRUB_DEFAULTS, Observations
from .spec import HostTuningArgs
from .target import Target, Topology, acs_path

IOMMU_BIOS = {
    "intel": "Intel VT-d (\"Intel Virtualization Technology for Directed I/O\")",
    "amd": "the IOMMU (\"AMD-Vi\" / \"IOMMU\", often under AMD CBS > NBIO)",
}
# What a host keeps for itself beyond the huge pages: the kernel, the hypervisor, libvirt.
HOST_RESERVE_KIB = 1024 * 1024


def preflight(spec: HostTuningArgs, facts: HostFacts, observed: Observations,
              topology: Topology, target: Target) -> list[str]:
    problems: list[str] = []
    problems += _iommu(facts)
    problems += _config_space(spec, facts, topology)
    problems += _sriov(spec, facts, topology, target)
    problems += _acs(spec, facts, topology)
    problems += _hugepages(facts, target)
    problems += _groups(facts, topology)
    problems += _firmware(observed, target)
    problems += _bootloader(observed)
    return problems


def _iommu(facts: HostFacts) -> list[str]:
    if facts.iommu.acpi_table:
        return []
    kind = "amd" if facts.cpu_vendor == "AuthenticAMD" else "intel"
    table = "IVRS" if kind == "amd" else "DMAR"
    return [f"the firmware publishes no {table} ACPI table, so the IOMMU is off in the BIOS: "
            f"turn on {IOMMU_BIOS[kind]} in the BIOS setup"]


def _config_space(spec: HostTuningArgs, facts: HostFacts, topology: Topology) -> list[str]:
    if not (spec.acs or spec.max_read_request):
        return []
    # Unprivileged readers see only the first 64 bytes; conventional PCI functions have 256.
    unreadable = [address for address in topology.gpus + topology.nic_pfs
                  if not (facts.pci[address].caps and facts.pci[address].caps.config_size >= 256)]
    if not unreadable:
        return []
    return [f"cannot read the PCIe configuration space of {', '.join(unreadable)}: connect as "
            f"root (or a user with passwordless sudo)"]


def _sriov(spec: HostTuningArgs, facts: HostFacts, topology: Topology,
           target: Target) -> list[str]:
    problems = []
    for address in topology.nic_pfs:
        device = facts.pci[address]
        if device.sriov_totalvfs:
            continue
        firmware_fixes_it = target.firmware.get(address.rsplit(".", 1)[0] + ".0", {}).get(
            "SRIOV_EN") == 1
        if firmware_fixes_it:
            continue  # ConnectX hides the capability until SRIOV_EN=1 is active
        problems.append(f"NIC {address} ({device.vendor_device}) shows no SR-IOV capability: "
                        f"turn on \"SR-IOV Support\" in the BIOS setup (and SR-IOV in the "
                        f"NIC's own firmware)")
    return problems


def _acs(spec: HostTuningArgs, facts: HostFacts, topology: Topology) -> list[str]:
    if not spec.acs:
        return []
    problems = []
    for pair in topology.pairs:
        for bridge in acs_path(facts, pair):
            device = facts.pci[bridge]
            if device.port_type in {"root_port", "downstream_port"} and \
                    device.caps and device.caps.acs is None:
                problems.append(
                    f"PCIe {device.port_type.replace('_', ' ')} {bridge} between GPU {pair.gpu} "
                    f"and NIC {pair.nic} has no ACS capability: turn on \"ACS\" (\"PCIe ACS "
                    f"Control\") in the BIOS setup; without it the IOMMU cannot isolate "
                    f"peer-to-peer traffic (or set acs: false to leave ACS alone)")
    return problems


def _hugepages(facts: HostFacts, target: Target) -> list[str]:
    if target.hugepages_kib is None:
        return []
    problems = []
    for node_id, count in sorted(target.hugepages.items()):
        node = facts.node(node_id)
        if node is None:
            problems.append(f"huge pages for NUMA node {node_id}, which this host does not "
                            f"have (nodes: {[n.id for n in facts.numa_nodes]})")
            continue
        wanted = count * target.hugepages_kib
        room = (node.memory_kib or 0) - HOST_RESERVE_KIB
        if wanted > room:
            problems.append(f"NUMA node {node_id}: {count} huge pages of "
                            f"{target.hugepages_kib // 1024} MiB need {wanted // 1024} MiB, but "
                            f"the node has {(node.memory_kib or 0) // 1024} MiB and the host "
                            f"keeps {HOST_RESERVE_KIB // 1024} MiB")
    return problems


def _groups(facts: HostFacts, topology: Topology) -> list[str]:
    problems = []
    for address in topology.vfio_devices:
        device = facts.pci[address]
        slot = address.rsplit(".", 1)[0]
        outsiders = [other for other in topology.vfio_devices
                     if facts.pci[other].iommu_group == device.iommu_group
                     and other.rsplit(".", 1)[0] != slot and other not in _selected(topology)]
        for other in outsiders:
            member = facts.pci[other]
            problems.append(
                f"IOMMU group {device.iommu_group} of {address} also holds {other} "
                f"({member.vendor_device}, driver {member.driver or 'none'}), which is not part "
                f"of that device: passing {address} through would take {other} from the host. "
                f"Use a slot whose group holds only the GPU, or turn on ACS for its PCIe switch "
                f"in the BIOS setup")
    return sorted(set(problems))


def _selected(topology: Topology) -> set[str]:
    return set(topology.selected)


def _firmware(observed: Observations, target: Target) -> list[str]:
    problems = []
    for device, wanted in sorted(target.firmware.items()):
        query = observed.firmware.get(device)
        if query is None:
            problems.append(f"NIC {device}: no mlxconfig or mstconfig on the host to configure "
                            f"its firmware: install mstflint (Debian: apt install mstflint) or "
                            f"NVIDIA MFT, or set firmware.enabled to false")
            continue
        if query.device is None:
            detail = query.error or query.output.strip()[-300:] or f"exit {query.exit_code}"
            problems.append(f"NIC {device}: the firmware tool could not query it: {detail}")
            continue
        if query.device.truncated:
            continue
        for name in wanted:
            if name not in query.device.params and name not in REQUIRES_ACTIVE:
                problems.append(f"NIC {device}: its firmware has no {name} parameter (`mlxconfig "
                                f"-d {device} q` lists what it has)")
    return problems


def _bootloader(observed: Observations) -> list[str]:
    if observed.bootloader == "grubby" or observed.files.get(GRUB_DEFAULTS) is not None:
        return []
    return [f"neither {GRUB_DEFAULTS} nor grubby is present: vela changes the kernel command "
            f"line through the host's GRUB configuration"]
