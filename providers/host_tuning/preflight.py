"""Checks that must pass before HostTuning writes anything. Pure.

BIOS settings cannot be read from Linux, only their effects: an ACPI DMAR/IVRS table for the
IOMMU (and, once the kernel was asked to, its units and groups), the vmx/svm CPU flag and
/dev/kvm for VT-x/AMD-V, an SR-IOV capability on the NIC, an ACS capability on the PCIe ports
between a GPU and its NIC. When an effect is missing the message names the BIOS option to turn
on. The running kernel is checked too: its lockdown (Secure Boot) forbids the register writes,
its version decides whether per-node huge pages on the command line work, and the daemons it
runs can hold the GPUs that are to go to vfio-pci.
"""

from __future__ import annotations

from ..facts.models import HostFacts, iommu_live, iommu_requested
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
# CPU virtualization: the /proc/cpuinfo flag, the BIOS option, the KVM module.
CPU_VIRTUALIZATION = {
    "intel": ("vmx", "Intel VT-x (\"Intel Virtualization Technology\")", "kvm_intel"),
    "amd": ("svm", "AMD-V (\"SVM Mode\")", "kvm_amd"),
}
# `hugepages=0:N,1:M` (a count per NUMA node) is understood from Linux 5.16 on: commit
# b5389086ad7b "hugetlbfs: extend the definition of hugepages parameter to support node
# allocation". Older kernels read the leading node number as the count.
PER_NODE_HUGEPAGES_SINCE = (5, 16)
# Kernel lockdown levels that forbid writing PCI config space from user space: drivers/pci/
# pci-sysfs.c pci_write_config() returns security_locked_down(LOCKDOWN_PCI_ACCESS), which is
# below LOCKDOWN_INTEGRITY_MAX (security/lockdown/lockdown.c).
LOCKED_DOWN = {"integrity", "confidentiality"}
# Register writes HostTuning plans, and the input that leaves each alone.
REGISTER_SETTINGS = {"ACS control": "acs: false", "Max Read Request": "maxReadRequest: false"}
# The systemd unit of each daemon that keeps GPUs open.
HOLDER_SERVICES = {"nvidia-persistenced": "nvidia-persistenced",
                   "nv-fabricmanager": "nvidia-fabricmanager", "nv-hostengine": "nvidia-dcgm"}


def preflight(spec: HostTuningArgs, facts: HostFacts, observed: Observations,
              topology: Topology, target: Target) -> list[str]:
    problems: list[str] = []
    problems += _iommu(facts)
    problems += _virtualization(spec, facts)
    problems += _config_space(spec, facts, topology)
    problems += _lockdown(facts, target)
    problems += _sriov(spec, facts, topology, target)
    problems += _acs(spec, facts, topology)
    problems += _hugepages(facts, target)
    problems += _hugepages_cmdline(spec, facts)
    problems += _groups(spec, facts, topology)
    problems += _gpu_holders(facts, target)
    problems += _firmware(observed, target)
    problems += _bootloader(observed)
    return problems


def _iommu(facts: HostFacts) -> list[str]:
    kind = facts.iommu_kind
    if not facts.iommu.acpi_table:
        table = "IVRS" if kind == "amd" else "DMAR"
        return [f"the firmware publishes no {table} ACPI table, so the IOMMU is off in the BIOS: "
                f"turn on {IOMMU_BIOS[kind]} in the BIOS setup"]
    # Before the first boot with the argument (HostTuning adds it and reboots) an IOMMU that is
    # not up yet is expected; once the kernel was asked for it, it must be there.
    if not iommu_requested(facts) or iommu_live(facts):
        return []
    asked = ("the kernel was booted with intel_iommu=on" if kind == "intel" else
             "the AMD IOMMU is on by default (the command line has no amd_iommu=off)")
    return [f"{asked}, but it brought up no IOMMU ({len(facts.iommu.units)} unit(s) in "
            f"/sys/class/iommu, {facts.iommu.groups} group(s) in /sys/kernel/iommu_groups): "
            f"{IOMMU_BIOS[kind]} is off in the BIOS setup: turn it on (`dmesg | grep -i -e DMAR "
            f"-e IOMMU -e AMD-Vi` shows what the kernel found)"]


def _virtualization(spec: HostTuningArgs, facts: HostFacts) -> list[str]:
    """VT-x/AMD-V, for hosts prepared to run VMs. A host that is itself a virtual machine (the
    `hypervisor` flag: the lab's emulated hosts) runs its guests under QEMU's TCG when it has
    no nested virtualization; HostTuning cannot tell which its VMs will use, so it leaves such
    a host alone."""
    if spec.mode != "vm" or facts.cpu_flags is None or "hypervisor" in facts.cpu_flags:
        return []
    kind = "amd" if facts.cpu_vendor in {"AuthenticAMD", "HygonGenuine"} else "intel"
    flag, setting, module = CPU_VIRTUALIZATION[kind]
    if flag not in facts.cpu_flags:
        return [f"the CPU shows no {flag} flag in /proc/cpuinfo, so KVM cannot run the VMs this "
                f"host is prepared for: turn on {setting} in the BIOS setup (the kernel hides the "
                f"flag while the firmware keeps it off), then `modprobe {module}`; or set mode: "
                f"baremetal"]
    if facts.kvm_device is False:
        return [f"there is no /dev/kvm, so KVM cannot run the VMs this host is prepared for: "
                f"load it with `modprobe {module}`; if that fails and dmesg says it is disabled "
                f"by the BIOS, turn on {setting} in the BIOS setup"]
    return []


def _lockdown(facts: HostFacts, target: Target) -> list[str]:
    if facts.lockdown not in LOCKED_DOWN or not target.registers:
        return []
    what = sorted({register.what for register in target.registers.values()})
    inputs = ", ".join(REGISTER_SETTINGS[name] for name in what if name in REGISTER_SETTINGS)
    return [f"the kernel is locked down ({facts.lockdown}, as under Secure Boot), which forbids "
            f"writing PCI configuration space from user space, so {', '.join(what)} cannot be "
            f"set: turn off Secure Boot in the firmware setup (lockdown= on the command line can "
            f"only raise the level), or leave those registers alone ({inputs})"]


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


def _hugepages_cmdline(spec: HostTuningArgs, facts: HostFacts) -> list[str]:
    hugepages = spec.hugepages
    version = facts.kernel_version
    if hugepages is None or hugepages.per_node is None or version is None or \
            version >= PER_NODE_HUGEPAGES_SINCE:
        return []
    per_node = ",".join(f"{node}:{count}" for node, count in sorted(hugepages.per_node.items()))
    first = min(hugepages.per_node) if hugepages.per_node else 0
    return [f"kernel {facts.kernel} reads hugepages={per_node} as {first} page(s): per-node huge "
            f"pages on the command line are understood from Linux 5.16 on, so the pool reserved "
            f"at boot would be wrong: give hugepages.total instead (the kernel spreads it evenly "
            f"over the NUMA nodes: total: {sum(hugepages.per_node.values())}), or upgrade the "
            f"kernel"]


def _gpu_holders(facts: HostFacts, target: Target) -> list[str]:
    """nvidia's remove waits while a device is open: unbinding a GPU that a daemon holds would
    hang until the daemon lets go."""
    if not facts.gpu_holders:
        return []
    held = [address for address, driver in sorted(target.drivers.items())
            if driver == "vfio-pci" and address in facts.pci
            and facts.pci[address].driver == "nvidia"]
    if not held:
        return []
    services = " ".join(HOLDER_SERVICES.get(daemon, daemon) for daemon in facts.gpu_holders)
    return [f"{', '.join(facts.gpu_holders)} keep(s) the GPUs open, and {len(held)} device(s) "
            f"that go to vfio-pci are still bound to nvidia ({', '.join(held)}): unbinding them "
            f"would wait on those daemons; stop them for good first: `systemctl disable --now "
            f"{services}`"]


def _groups(spec: HostTuningArgs, facts: HostFacts, topology: Topology) -> list[str]:
    """A device passed through takes its whole IOMMU group with it (vfio-pci needs every
    member of the group). Without vfio (baremetal mode: no VMs, the GPUs keep their own driver
    and nothing goes to vfio-pci) no group is handed over, so sharing one takes nothing from
    the host."""
    if not spec.vfio:
        return []
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
