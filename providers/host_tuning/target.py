"""The state HostTuning wants on a host, and the state it found there (to restore on delete).

`select_topology` picks the GPUs and NICs and pairs each GPU with the NIC under its PCIe
switch. `desired_target` turns the inputs and the facts into a `Target`: every kernel argument,
file, register, driver binding, huge page pool, firmware parameter and sysctl that vela owns,
with its wanted value. `original_target` captures the current value of the same items. Both are
pure; delete applies the originals through the same planner as create.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..common.registers import Register, current_register, max_read_request
from ..common.selectors import matches
from ..facts.cmdline import param_keys
from ..facts.models import HostFacts, PciDevice
from . import bootunit, grub
from .firmware import recipe_settings
from .observe import (
    GRUB_DEFAULTS,
    MANAGED_FILES,
    MODPROBE_CONF,
    MODULES_CONF,
    SYSCTL_CONF,
    Observations,
)
from .spec import HostTuningArgs

MELLANOX = 0x15B3  # ConnectX (Mellanox, now NVIDIA networking)
ACS_MASK = 0x007F  # every defined ACS control bit
ACS_VM = 0x005D  # SV, RR, CR, UF, DT: isolation for untranslated P2P, direct for translated
ACS_BAREMETAL = 0x0000  # bare-metal GPUDirect: peer traffic never detours through the root
CLASS_BRIDGE = 0x06
GRUBBY = "grubby"


class Pairing(BaseModel):
    gpu: str
    nic: str | None
    switch: str | None
    numa_node: int | None


class Topology(BaseModel):
    """The devices HostTuning acts on."""

    selected: list[str]  # what the GPU selectors picked (GPUs, NVSwitch bridges)
    vfio_devices: list[str]  # the selected devices plus their IOMMU group companions
    gpus: list[str]  # selected devices that are not bridges (paired with NICs)
    nic_pfs: list[str]  # selected NIC physical functions
    nic_vfs: list[str]  # their virtual functions present now
    pairs: list[Pairing]


class Target(BaseModel):
    kernel_args: dict[str, str | None] = Field(default_factory=dict)  # key -> token / absent
    # Where the arguments are configured: GRUB variable (or "grubby") -> key -> token / absent.
    grub: dict[str, dict[str, str | None]] = Field(default_factory=dict)
    files: dict[str, str | None] = Field(default_factory=dict)  # path -> content / absent
    unit_enabled: bool | None = None  # None: not managed
    registers: dict[str, Register] = Field(default_factory=dict)
    drivers: dict[str, str | None] = Field(default_factory=dict)  # address -> override
    # Bound by address alone (driver_override, at run time and by the boot unit): other devices
    # with the same vendor:device stay with their driver, so no vfio-pci `ids` names it.
    by_address: list[str] = Field(default_factory=list)
    hugepages_kib: int | None = None
    hugepages: dict[int, int] = Field(default_factory=dict)  # node -> pages
    hugepages_total: int | None = None
    modules: dict[str, bool] = Field(default_factory=dict)  # module -> loaded
    firmware_tool: str | None = None
    # device -> parameter -> value; None: not visible when captured, leave it alone
    firmware: dict[str, dict[str, int | None]] = Field(default_factory=dict)
    sysctls: dict[str, str] = Field(default_factory=dict)


class SelectionError(ValueError):
    pass


# -- devices -------------------------------------------------------------------------------------

def _selected(selectors: list[str], facts: HostFacts) -> list[PciDevice]:
    return [device for _, device in sorted(facts.pci.items())
            if any(matches(selector, device) for selector in selectors)]


def select_topology(spec: HostTuningArgs, facts: HostFacts) -> Topology:
    for selector in spec.gpu_selector + spec.nic_selector:
        if ":" in selector and selector.count(":") == 2 and selector not in facts.pci:
            raise SelectionError(f"no PCI device {selector} on this host (`lspci -D` lists "
                                 f"them)")
    chosen = [device for device in _selected(spec.gpu_selector, facts) if not device.is_bridge]
    if not chosen:
        raise SelectionError(f"no device on this host matches gpuSelector={spec.gpu_selector}; "
                             f"found: {_inventory(facts)}")
    nics = [device for device in _selected(spec.nic_selector, facts)
            if not device.is_virtual_function]
    # GPUs are what was selected minus bridge-class devices (NVSwitch: passed through whole,
    # never paired with a NIC). The lab's GPU stand-in is a memory-class device.
    gpus = [device for device in chosen if device.base_class != CLASS_BRIDGE]
    pairs = [_pair(facts, gpu, nics) for gpu in gpus]
    vfio = sorted({member for device in chosen for member in _group_companions(facts, device)})
    vfs = sorted(vf.address for nic in nics for vf in nic.virtfns)
    return Topology(selected=[device.address for device in chosen], vfio_devices=vfio,
                    gpus=[gpu.address for gpu in gpus],
                    nic_pfs=[nic.address for nic in nics], nic_vfs=vfs, pairs=pairs)


def _inventory(facts: HostFacts) -> str:
    ids = sorted({f"{device.vendor_device} (class {device.class_code >> 8:04x})"
                  for device in facts.pci.values() if not device.is_bridge})
    return ", ".join(ids) or "no PCI devices"


def _pair(facts: HostFacts, gpu: PciDevice, nics: list[PciDevice]) -> Pairing:
    switch = facts.upstream_switch(gpu.address)
    under_switch = [nic for nic in nics if switch and facts.upstream_switch(nic.address) == switch]
    nic = under_switch[0].address if under_switch else None
    return Pairing(gpu=gpu.address, nic=nic, switch=switch, numa_node=gpu.numa_node)


def vfio_ids(facts: HostFacts, topology: Topology) -> list[str]:
    """The vendor:device ids vfio-pci may claim by id at boot (`vfio-pci.ids`, modprobe's
    `ids=`): those whose every device on the host goes to vfio-pci. vfio-pci's id table takes
    each device with a listed id, whatever its address (drivers/vfio/pci/vfio_pci.c
    vfio_pci_fill_ids adds them as dynamic ids), so a GPU a selector by address left out would
    be taken too."""
    wanted = set(topology.vfio_devices)
    ids = {facts.pci[address].vendor_device for address in wanted}
    return sorted(id_ for id_ in ids
                  if all(device.address in wanted for device in facts.pci.values()
                         if device.vendor_device == id_))


def _group_companions(facts: HostFacts, device: PciDevice) -> list[str]:
    """The device and every non-bridge function in its IOMMU group (all must go to vfio-pci
    together for the group to be usable by a VM)."""
    if device.iommu_group is None:
        return [device.address]
    return [other.address for other in facts.pci.values()
            if other.iommu_group == device.iommu_group and not other.is_bridge]


# -- desired state -------------------------------------------------------------------------------

def desired_target(spec: HostTuningArgs, facts: HostFacts, observed: Observations,
                   topology: Topology) -> Target:
    target = Target()
    target.kernel_args = _kernel_args(spec, facts, topology)
    target.grub = _grub_placement(observed, target.kernel_args)
    target.registers = _registers(spec, facts, topology)
    if spec.vfio:
        target.drivers = {address: "vfio-pci" for address in topology.vfio_devices}
        whole = set(vfio_ids(facts, topology))
        target.by_address = [address for address in topology.vfio_devices
                             if facts.pci[address].vendor_device not in whole]
        target.modules = {"vfio_pci": True}
    _hugepages(spec, facts, target)
    _firmware(spec, facts, observed, topology, target)
    target.sysctls = dict(spec.sysctls)
    target.files = _files(spec, facts, topology, target)
    target.unit_enabled = True
    return target


def _kernel_args(spec: HostTuningArgs, facts: HostFacts,
                 topology: Topology) -> dict[str, str | None]:
    kind = facts.iommu.kind or ("amd" if facts.cpu_vendor == "AuthenticAMD" else "intel")
    # Intel's IOMMU stays off unless asked for. AMD's is on by default and `amd_iommu=` has no
    # `on` (it takes fullflush, off, force_isolation, ...: Documentation/admin-guide/
    # kernel-parameters.txt; drivers/iommu/amd/init.c parse_amd_iommu_options), so an AMD
    # host gets no amd_iommu token, and no amd_iommu key to save or restore.
    tokens: list[str | tuple[str, None]] = ["intel_iommu=on"] if kind == "intel" else []
    if kind == "amd" and spec.vfio and "amd_iommu=off" in facts.cmdline.split():
        # ... except where the line turns it off: VMs need it, so that token goes (delete
        # restores it).
        tokens.append(("amd_iommu", None))
    tokens.append("iommu=pt" if spec.iommu_passthrough else ("iommu", None))
    if spec.vfio:
        ids = vfio_ids(facts, topology)
        tokens.append("vfio-pci.ids=" + ",".join(ids) if ids else ("vfio_pci.ids", None))
    if spec.blacklist_nouveau:
        tokens += ["modprobe.blacklist=nouveau", "rd.driver.blacklist=nouveau"]
    if spec.hugepages is not None:
        size = spec.hugepages.size
        tokens += [f"default_hugepagesz={size}", f"hugepagesz={size}"]
        if spec.hugepages.total is not None:
            tokens.append(f"hugepages={spec.hugepages.total}")
        else:
            tokens.append("hugepages=" + ",".join(
                f"{node}:{count}" for node, count in sorted(spec.hugepages.per_node.items())))
    # Keyed where they stand: the pool's hugepages= is hugepages[SIZE] (one line can hold a pool
    # per size; vela owns only its own).
    keys = iter(param_keys([token for token in tokens if isinstance(token, str)]))
    return {(next(keys) if isinstance(token, str) else token[0]):
            (token if isinstance(token, str) else None) for token in tokens}


def _grub_placement(observed: Observations,
                    wanted: dict[str, str | None]) -> dict[str, dict[str, str | None]]:
    if observed.bootloader == "grubby":
        return {GRUBBY: dict(wanted)}
    return grub.placement(observed.files.get(GRUB_DEFAULTS) or "", wanted)


def configured_args(observed: Observations) -> dict[str, str]:
    """The arguments the bootloader configuration gives the next boot: key -> token."""
    if observed.bootloader == "grubby":
        return grub.configured_line(observed.grubby_args or "")
    return grub.configured(observed.files.get(GRUB_DEFAULTS) or "")


def _registers(spec: HostTuningArgs, facts: HostFacts,
               topology: Topology) -> dict[str, Register]:
    registers: list[Register | None] = []
    if spec.acs:
        value = ACS_VM if spec.mode == "vm" else ACS_BAREMETAL
        for bridge in _acs_bridges(facts, topology):
            acs = facts.pci[bridge].caps.acs
            # Only the controls the port implements: the others are hardwired to 0 (PCIe
            # Base Specification, ACS Control Register) and would never read back as written.
            supported = ACS_MASK & acs.capability
            registers.append(Register(address=bridge, offset=acs.offset + 6,
                                      value=value & supported, mask=supported,
                                      what="ACS control"))
    if spec.max_read_request:
        # Not on VFs: their Max_Read_Request_Size is RsvdP, the PF's value applies (PCIe Base
        # Specification, SR-IOV Device Control; drivers/pci/probe.c, pci_configure_mps).
        for address in topology.gpus + topology.nic_pfs:
            registers.append(max_read_request(facts.pci[address], spec.max_read_request))
    return {register.key: register for register in registers if register is not None}


def acs_path(facts: HostFacts, pair: Pairing) -> list[str]:
    """The bridges peer-to-peer traffic between a GPU and its NIC crosses."""
    return facts.path_between(pair.gpu, pair.nic) if pair.nic else []


def gpu_nic_paths(facts: HostFacts, topology: Topology) -> list[list[str]]:
    """The bridges between each GPU and every selected NIC under its switch (not only the NIC
    it is paired with: GPUDirect traffic may use any of them), one path per GPU-NIC pair."""
    return [facts.path_between(pair.gpu, nic) for pair in topology.pairs if pair.switch
            for nic in topology.nic_pfs if facts.upstream_switch(nic) == pair.switch]


def _acs_bridges(facts: HostFacts, topology: Topology) -> list[str]:
    """The bridges on those paths that have an ACS capability: where ACS control is written."""
    bridges = {bridge for path in gpu_nic_paths(facts, topology) for bridge in path
               if facts.pci[bridge].caps and facts.pci[bridge].caps.acs}
    return sorted(bridges)


def _hugepages(spec: HostTuningArgs, facts: HostFacts, target: Target) -> None:
    if spec.hugepages is None:
        return
    target.hugepages_kib = spec.hugepages.size_kib
    if spec.hugepages.per_node is not None:
        target.hugepages = dict(spec.hugepages.per_node)
        return
    nodes = [node.id for node in facts.numa_nodes] or [0]
    total = spec.hugepages.total
    # As the kernel does with hugepages=N at boot: spread evenly, lowest nodes first.
    target.hugepages = {node: total // len(nodes) + (1 if index < total % len(nodes) else 0)
                        for index, node in enumerate(nodes)}
    target.hugepages_total = total


def _firmware(spec: HostTuningArgs, facts: HostFacts, observed: Observations,
              topology: Topology, target: Target) -> None:
    if spec.firmware.enabled is False:
        return
    settings = {**recipe_settings(spec.mode, spec.firmware.num_vfs), **spec.firmware.settings}
    for device in sorted({_function_zero(address) for address in topology.nic_pfs}):
        function = facts.pci.get(device)
        query = observed.firmware.get(device)
        if query is None and spec.firmware.enabled is None and not (
                function and function.vendor_id == MELLANOX):
            continue  # auto: ConnectX NICs (other NICs have no such settings)
        # A ConnectX without an answer from a tool (none installed) stays in the target:
        # preflight then says which tool to install, instead of skipping its firmware.
        target.firmware[device] = dict(settings)
    if target.firmware:
        target.firmware_tool = spec.firmware.tool


def _function_zero(address: str) -> str:
    return address.rsplit(".", 1)[0] + ".0"


def _files(spec: HostTuningArgs, facts: HostFacts, topology: Topology,
           target: Target) -> dict[str, str | None]:
    files: dict[str, str | None] = {path: None for path in MANAGED_FILES}
    modprobe = []
    if spec.blacklist_nouveau:
        modprobe += ["blacklist nouveau", "options nouveau modeset=0"]
    if spec.vfio:
        ids = vfio_ids(facts, topology)
        modprobe += [f"options vfio-pci ids={','.join(ids)}"] if ids else []
        modprobe += ["softdep nvidia pre: vfio-pci", "softdep nouveau pre: vfio-pci"]
        files[MODULES_CONF] = bootunit.HEADER + "vfio-pci\n"
    if modprobe:
        files[MODPROBE_CONF] = bootunit.HEADER + "\n".join(modprobe) + "\n"
    if target.sysctls:
        files[SYSCTL_CONF] = bootunit.HEADER + "".join(
            f"{name} = {value}\n" for name, value in sorted(target.sysctls.items()))
    files.update(bootunit.files(target))
    return files


# -- what is there now --------------------------------------------------------------------------

def original_target(desired: Target, facts: HostFacts, observed: Observations) -> Target:
    """The current value of every item `desired` manages: what delete puts back."""
    original = Target()
    configured = configured_args(observed)
    original.kernel_args = {key: configured.get(key) for key in desired.kernel_args}
    if GRUBBY in desired.grub:
        original.grub = {GRUBBY: dict(original.kernel_args)}
    else:
        found = grub.keyed(observed.files.get(GRUB_DEFAULTS) or "")
        for variable, keys in desired.grub.items():
            tokens = found.get(variable, {})
            original.grub[variable] = {key: tokens.get(key) for key in keys}
    original.files = {path: observed.files.get(path) for path in desired.files}
    if desired.unit_enabled is not None:
        original.unit_enabled = observed.unit_enabled
    for key, register in desired.registers.items():
        current = current_register(facts, register.address, register.offset)
        if current is not None:
            original.registers[key] = register.model_copy(update={"value": current & register.mask})
    for address in desired.drivers:
        device = facts.pci.get(address)
        original.drivers[address] = device.driver_override if device else None
    original.modules = {name: name in observed.modules for name in desired.modules}
    if desired.hugepages_kib is not None:
        original.hugepages_kib = desired.hugepages_kib
        for node in desired.hugepages:
            pool = facts.node(node).pool(desired.hugepages_kib) if facts.node(node) else None
            original.hugepages[node] = pool.total if pool else 0
    original.firmware_tool = desired.firmware_tool
    for device, settings in desired.firmware.items():
        query = observed.firmware.get(device)
        params = query.device.params if query and query.device else {}
        original.firmware[device] = {name: params[name].next_boot if name in params else None
                                     for name in settings}
    original.sysctls = {name: observed.sysctls[name] for name in desired.sysctls
                        if name in observed.sysctls}
    return original


def merge_originals(saved: dict[str, Any] | None, captured: Target) -> Target:
    """Originals saved by an earlier run win: they were captured before vela changed anything.
    Items never seen before take what is there now."""
    if not saved:
        return captured
    merged = Target.model_validate(saved)
    for name in ["kernel_args", "files", "registers", "drivers", "hugepages", "sysctls",
                 "modules"]:
        combined = {**getattr(captured, name), **getattr(merged, name)}
        setattr(merged, name, combined)
    for variable, keys in captured.grub.items():
        merged.grub[variable] = {**keys, **merged.grub.get(variable, {})}
    for device, params in captured.firmware.items():
        merged.firmware[device] = {**params, **merged.firmware.get(device, {})}
    if merged.unit_enabled is None:
        merged.unit_enabled = captured.unit_enabled
    merged.hugepages_kib = merged.hugepages_kib or captured.hugepages_kib
    merged.firmware_tool = merged.firmware_tool or captured.firmware_tool
    return merged
