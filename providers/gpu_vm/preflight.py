"""Checks that must pass before GpuVm writes anything: huge pages there and free, the image or
kernel present, the network active. Pure.
"""

from __future__ import annotations

from ..facts.models import HostFacts
from .observe import VmObservations
from .placement import GIB_KIB, Layout
from .spec import GpuVmArgs


def preflight(spec: GpuVmArgs, facts: HostFacts, observed: VmObservations, layout: Layout,
              new: bool) -> list[str]:
    problems = []
    if spec.hugepages:
        if observed.hugetlbfs_for(GIB_KIB) is None:
            problems.append("no hugetlbfs mount serves 1 GiB pages: HostTuning's hugepages "
                            "setting (default_hugepagesz=1G) provides one, or mount hugetlbfs "
                            "with pagesize=1G and restart libvirtd")
        if new:
            for cell in layout.cells:
                node = facts.node(cell.host_node)
                pool = node.pool(GIB_KIB) if node else None
                free = pool.free if pool else 0
                needed = cell.memory_kib // GIB_KIB
                if needed > free:
                    problems.append(f"host NUMA node {cell.host_node} has {free} free 1 GiB huge "
                                    f"page(s); guest cell {cell.id} needs {needed}")
    if spec.image and observed.image_format is None:
        problems.append(f"no readable base image at {spec.image.path}")
    if spec.kernel_boot:
        for path in (spec.kernel_boot.kernel, spec.kernel_boot.initrd):
            if path not in observed.present:
                problems.append(f"{path} does not exist on the host")
    if observed.network_active is False:
        problems.append(f"libvirt network {spec.network!r} is not active (virsh net-start "
                        f"{spec.network})")
    return problems
