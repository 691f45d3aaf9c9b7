"""Parsing what GpuVm observes on a host: hugetlbfs mounts as the kernel prints them."""

from __future__ import annotations

from providers.gpu_vm.observe import VmObservations, mount_page_size_kib
from tests.support.recorded import recorded

MOUNTS = recorded("files/proc-mounts-hugetlbfs-debian12.txt")


def _observed() -> VmObservations:
    observed = VmObservations()
    for line in MOUNTS.splitlines():
        _, target, _, options, *_ = line.split()
        observed.hugetlbfs[target] = options
    return observed


def test_kernel_prints_gigantic_pages_in_megabytes_and_we_find_the_mount():
    assert _observed().hugetlbfs_for(1048576) == "/dev/hugepages1G"
    assert _observed().hugetlbfs_for(2048) == "/dev/hugepages"
    assert _observed().hugetlbfs_for(16384) is None


def test_page_size_units():
    assert mount_page_size_kib("rw,pagesize=1G") == 1048576
    assert mount_page_size_kib("rw,relatime,pagesize=2048k") == 2048
    assert mount_page_size_kib("rw,relatime") is None
