"""The domain GpuVm wants on a host: placement, XML, first-boot seed, volume. Pure.

`desired_domain` places the guest (keeping the devices a defined guest already holds), checks
the preflight, renders the domain XML from a typed spec (validated against libvirt's schema)
and the seed with the guest tuning, and returns them as a `DomainTarget` for the planner.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from ..errors import GpuVmError
from ..facts.models import HostFacts
from . import guest
from .observe import Domain, VmObservations, held_devices, paths, taken_devices
from .placement import GIB_KIB, Layout, PlacementError, gpu_nic_pairs, place
from .preflight import phys_bits_mode, preflight
from .spec import GpuVmArgs
from .xml.domain import domain as domain_xml
from .xml.domain import render
from .xml.schema import SchemaError, validate_for_host
from .xml.spec import DomainSpec


@dataclass(frozen=True)
class DomainTarget:
    layout: Layout
    xml: str
    seed: bytes  # the first-boot seed image (cloud-init NoCloud), guest tuning inside
    topology: str  # NCCL's topology file for the guest
    notes: tuple[str, ...] = ()  # the host's fast paths the guest gets, for the plan
    # This VM's NCCL environment (its VF names, GID index): an output, and in the guest profile
    environment: dict[str, str] = field(default_factory=dict)


def locality_notes(layout: Layout) -> list[str]:
    """NVLink and GPUDirect locality in words: a guest that lacks them trains slower."""
    notes = []
    if layout.nvlink is not None:
        gpus = sum(device.kind == "gpu" for device in layout.devices)
        notes.append("NVLink: yes, every GPU and NVSwitch" if layout.nvlink else
                     f"NVLink: no, {gpus} GPU(s) of an NVSwitch node")
    pairs = gpu_nic_pairs(layout)
    if pairs and any(device.kind == "vf" for device in layout.devices):
        local = sum(pair["gpudirect"] for pair in pairs)
        notes.append(f"GPUDirect: {local} of {len(pairs)} GPU(s) share a PCIe switch with a NIC")
    return notes


def desired_domain(host_name: str, spec: GpuVmArgs, facts: HostFacts,
                   observed: VmObservations) -> DomainTarget:
    current = observed.domain(spec.name)
    if current is not None and not current.ours:
        raise GpuVmError(f"{host_name}: a domain named {spec.name!r} exists and was not made "
                         f"by vela: choose another name")
    layout = _place(host_name, spec, facts, observed, current)
    element = domain_xml(domain_spec(spec, observed, current), layout)
    try:  # against the host's libvirt schema: here if it is the same release, else there
        validate_for_host(element, observed.libvirt_version, observed.validator)
    except SchemaError as exc:
        raise GpuVmError(f"{host_name}: {exc}") from None
    ids = guest.device_ids(layout, facts)
    topology = guest.nccl_topology(layout, facts.cpu_vendor, ids)
    seed = guest.seed_image(spec, guest.tuning_script(spec, layout, ids, topology))
    return DomainTarget(layout=layout, xml=render(element), seed=seed, topology=topology,
                        environment=guest.nccl_environment(spec, layout, ids),
                        notes=tuple(locality_notes(layout)))


def _place(host_name: str, spec: GpuVmArgs, facts: HostFacts, observed: VmObservations,
           current: Domain | None) -> Layout:
    if current is not None and isinstance(spec.gpus, int) and spec.gpus:
        # Keep the GPUs a defined guest already has (placement is for new guests).
        gpus = [address for address in held_devices(current)
                if address not in {vf.address for vf in spec.vfs}]
        if len(gpus) == spec.gpus:
            spec = spec.model_copy(update={"gpus": gpus})
    try:
        layout = place(spec, facts, taken_devices(observed, spec.name),
                       pinned=pinned_cpus(observed, spec.name))
    except PlacementError as exc:
        raise GpuVmError(f"{host_name}: {exc}. Nothing was changed.") from None
    problems = preflight(spec, facts, observed, layout, new=current is None)
    if problems:
        raise GpuVmError(f"{host_name}: " + "; ".join(problems) + ". Nothing was changed.")
    return layout


def domain_spec(spec: GpuVmArgs, observed: VmObservations, current: Domain | None) -> DomainSpec:
    where = paths(spec)
    # By the host's libvirt: passthrough with limit= (9.3+), emulate, or none before 8.7, when
    # preflight's address_bits found QEMU's default enough.
    mode = phys_bits_mode(spec.domain_type, spec.cpu_model, observed.libvirt_version)
    boot = spec.kernel_boot
    return DomainSpec(
        name=spec.name, uuid=current.uuid if current else str(uuid.uuid5(
            uuid.NAMESPACE_URL, f"vela:{spec.address}:{spec.name}")),
        domain_type=spec.domain_type, cpu_model=spec.cpu_model, phys_bits_mode=mode,
        hugepage_kib=GIB_KIB if spec.hugepages else None, firmware=spec.firmware,
        disk=where["disk"] if spec.image else None,
        kernel=boot.kernel if boot else None, initrd=boot.initrd if boot else None,
        cmdline=boot.cmdline if boot else None, seed=where["seed"], network=spec.network,
        console_log=where["console"], shutdown_timeout=spec.shutdown_timeout)


def pinned_cpus(observed: VmObservations, except_name: str) -> dict[int, str]:
    """Host CPU -> a domain whose vCPUs or emulator threads are pinned there (their cpusets
    in `<cputune>`, libvirt's formatdomain "CPU Tuning"): another guest's vCPUs go elsewhere."""
    pinned: dict[int, str] = {}
    for domain in observed.domains:
        if domain.name == except_name:
            continue
        for pin in domain.root.iterfind("cputune/*[@cpuset]"):
            for cpu in cpu_list(pin.get("cpuset")):
                pinned.setdefault(cpu, domain.name)
    return pinned


def cpu_list(cpuset: str) -> list[int]:
    """libvirt's cpuset syntax: "0-3,8,^2" (ranges, singles, exclusions)."""
    chosen: set[int] = set()
    for part in cpuset.split(","):
        part = part.strip()
        target, excluded = (part[1:], True) if part.startswith("^") else (part, False)
        low, _, high = target.partition("-")
        span = set(range(int(low), int(high or low) + 1))
        chosen = chosen - span if excluded else chosen | span
    return sorted(chosen)
