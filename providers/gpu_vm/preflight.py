"""Checks that must pass before GpuVm writes anything: huge pages there and free, the image or
kernel present, the network active, and enough physical address bits for the guest's RAM and
BARs on this host's CPU, QEMU and libvirt. Pure.
"""

from __future__ import annotations

from typing import Literal

from ..facts.models import HostFacts
from .observe import VmObservations, kib
from .placement import GIB_KIB, Layout
from .spec import GpuVmArgs

# libvirt 8.7 added <cpu><maxphysaddr mode= bits=> (libvirt commit e6c29f09 "conf: Add support
# for specifying CPU max physical address size"), 9.3 its limit= for mode='passthrough'.
MAXPHYSADDR_SINCE = (8, 7)
MAXPHYSADDR_LIMIT_SINCE = (9, 3)
# QEMU, target/i386/cpu.c x86_cpu_realizefn: a 64-bit CPU whose phys-bits nothing set (no
# phys-bits=, no host-phys-bits, no machine compat property) gets TCG_PHYS_ADDR_BITS
# (target/i386/tcg/helper-tcg.h: 40), under KVM as well as TCG; and any phys-bits outside
# 32..TARGET_PHYS_ADDR_SPACE_BITS (target/i386/cpu-param.h: 52) is refused ("phys-bits should
# be between 32 and 52"). Since QEMU's March 2021 commit "target/i386: allow modifying TCG
# phys-addr-bits" that range holds for TCG too; before it TCG took 40 only. Checked on Debian
# 12's QEMU 7.2 under TCG: qemu64 gets 40, phys-bits=52 is taken, 53 refused.
QEMU_DEFAULT_PHYS_BITS = 40
QEMU_MAX_PHYS_BITS = 52


def preflight(spec: GpuVmArgs, facts: HostFacts, observed: VmObservations, layout: Layout,
              new: bool) -> list[str]:
    problems = []
    if spec.hugepages:
        if observed.hugetlbfs_for(GIB_KIB) is None:
            problems.append("no hugetlbfs mount serves 1 GiB pages: HostTuning's hugepages "
                            "setting (default_hugepagesz=1G) provides one, or mount hugetlbfs "
                            "with pagesize=1G and restart libvirtd")
        if new:
            promised = promised_hugepages(observed, spec.name, GIB_KIB)
            for cell in layout.cells:
                node = facts.node(cell.host_node)
                pool = node.pool(GIB_KIB) if node else None
                free = (pool.free if pool else 0) - promised.get(cell.host_node, 0)
                needed = cell.memory_kib // GIB_KIB
                if needed > free:
                    held = f" once defined guests not yet running take their " \
                        f"{promised[cell.host_node]}" if promised.get(cell.host_node) else ""
                    problems.append(f"host NUMA node {cell.host_node} has {max(free, 0)} free "
                                    f"1 GiB huge page(s){held}; guest cell {cell.id} needs "
                                    f"{needed}")
    if spec.image and observed.image_format is None:
        problems.append(f"no readable base image at {spec.image.path}")
    if spec.kernel_boot:
        for path in (spec.kernel_boot.kernel, spec.kernel_boot.initrd):
            if path not in observed.present:
                problems.append(f"{path} does not exist on the host")
    if observed.network_active is False:
        problems.append(f"libvirt network {spec.network!r} is not active (virsh net-start "
                        f"{spec.network})")
    problems += address_bits(spec, facts, observed, layout)
    return problems


def promised_hugepages(observed: VmObservations, except_name: str,
                       page_kib: int) -> dict[int, int]:
    """Host node -> huge pages that defined guests which are not running will take when they
    start (a running guest's are no longer free already): a guest placed next to one created a
    moment before must not count the same pages. From each domain's cells and its strict
    per-cell `memnode` (the XML vela writes; libvirt formatdomain "NUMA Node Tuning")."""
    promised: dict[int, int] = {}
    for domain in observed.domains:
        if domain.name == except_name or domain.running:
            continue
        root = domain.root
        sizes = {kib(page.get("size"), page.get("unit"))
                 for page in root.iterfind("memoryBacking/hugepages/page")}
        if sizes != {page_kib}:
            continue
        nodes = {node.get("cellid"): node.get("nodeset")
                 for node in root.iterfind("numatune/memnode")}
        for cell in root.iterfind("cpu/numa/cell"):
            nodeset = nodes.get(cell.get("id"), "")
            if nodeset.isdigit():
                pages = kib(cell.get("memory"), cell.get("unit")) // page_kib
                promised[int(nodeset)] = promised.get(int(nodeset), 0) + pages
    return promised


PhysBitsMode = Literal["passthrough", "emulate", "none"]


def phys_bits_mode(domain_type: str, cpu_model: str,
                   libvirt_version: tuple[int, ...] | None) -> PhysBitsMode:
    """How the domain XML sets the guest's physical address bits on this host's libvirt.

    "passthrough" (`<maxphysaddr mode='passthrough' limit=N/>`, QEMU host-phys-bits=on with
    host-phys-bits-limit=N: the host's bits, at most N) for a host-passthrough CPU under KVM on
    libvirt >= 9.3; libvirt's first <maxphysaddr> took passthrough with host-passthrough CPUs
    only (commit 1c1a7cdd "qemu: Add support for max physical address size"). "emulate"
    (`bits=N`, QEMU phys-bits=N) otherwise, and where the version is unknown (the host's
    `virsh define --validate` then decides). "none" before libvirt 8.7, which has no
    <maxphysaddr>: QEMU's default stays, and `address_bits` says whether that is enough."""
    if libvirt_version is not None and libvirt_version < MAXPHYSADDR_SINCE:
        return "none"
    if (domain_type == "kvm" and cpu_model == "host-passthrough" and libvirt_version is not None
            and libvirt_version >= MAXPHYSADDR_LIMIT_SINCE):
        return "passthrough"
    return "emulate"


def address_bits(spec: GpuVmArgs, facts: HostFacts, observed: VmObservations,
                 layout: Layout) -> list[str]:
    """The guest's RAM plus every 64-bit BAR must fit the physical address bits it will get
    (too few is why GPUs vanish in big guests); the bits it may get are capped by:

    - kvm: the host CPU's own bits (/proc/cpuinfo "address sizes"): a guest told of more may
      place BARs and RAM where KVM cannot map them, and QEMU only warns ("Host physical bits
      (%u) does not match phys-bits property", target/i386/host-cpu.c
      host_cpu_adjust_phys_bits), so it is checked here. In passthrough mode the limit= vela
      writes is the bits needed, so it never exceeds the host's either.
    - qemu (TCG): QEMU's 52 (QEMU_MAX_PHYS_BITS); with <maxphysaddr mode='emulate'>, also the
      host CPU's bits, because libvirt refuses more ("The number of virtual CPU address bits
      cannot exceed the number supported by the host CPU", src/qemu/qemu_validate.c
      qemuValidateDomainDefCpu), whatever the domain type.
    - libvirt older than 8.7 (no <maxphysaddr>): QEMU's default. A host-passthrough CPU under
      KVM has the host's bits (QEMU sets host-phys-bits for -cpu host: target/i386/host-cpu.c
      host_cpu_max_instance_init, QEMU commit 5a140b255d), so it is a supported fallback; a
      named model (and every TCG CPU) keeps 40 (QEMU_DEFAULT_PHYS_BITS)."""
    need = layout.phys_bits
    host = facts.physical_address_bits
    version = observed.libvirt_version
    mode = phys_bits_mode(spec.domain_type, spec.cpu_model, version)
    smaller = "give each VM less memory or fewer GPUs (memoryGib, gpus)"
    limits: list[tuple[int, str, str]] = []  # bits, why, fix
    if spec.domain_type == "kvm" and host is not None:
        limits.append((host, f"the {host} the host CPU has (/proc/cpuinfo address sizes)",
                       smaller))
    if spec.domain_type == "qemu":
        limits.append((QEMU_MAX_PHYS_BITS, f"the {QEMU_MAX_PHYS_BITS} QEMU's TCG (domainType "
                       f"qemu) takes at most", smaller))
        if mode == "emulate" and host is not None:
            limits.append((host, f"the {host} of the host CPU, the most libvirt takes for a "
                           f"domain of any type (/proc/cpuinfo address sizes)", smaller))
    if mode == "none" and not (spec.domain_type == "kvm" and spec.cpu_model == "host-passthrough"):
        release = ".".join(str(part) for part in version or ())
        alternative = (", or use cpuModel host-passthrough (which gets the host CPU's bits)"
                       if spec.domain_type == "kvm" else "")
        limits.append((QEMU_DEFAULT_PHYS_BITS, f"the {QEMU_DEFAULT_PHYS_BITS} QEMU gives a "
                       f"{spec.cpu_model} CPU by default, as libvirt {release} on this host "
                       f"predates <maxphysaddr> (8.7)", f"upgrade libvirt on the host to 8.7 "
                       f"or later{alternative}, or {smaller}"))
    refusals = sorted((bits, why, fix) for bits, why, fix in limits if need > bits)
    if not refusals:
        return []
    _, why, fix = refusals[0]
    return [f"the guest's RAM plus passed-through BARs need {need} physical address bits, more "
            f"than {why}: {fix}"]
