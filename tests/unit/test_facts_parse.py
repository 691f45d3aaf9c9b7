"""Parsing gather.sh output, from a recorded real run on a lab host, and its failure modes."""

from __future__ import annotations

import pytest

from providers.facts import parse_gather_output
from providers.facts.parse import GatherOutputError, parse_cpulist
from tests.support.recorded import recorded

LAB = "gather/lab-host-q35-switch.txt"


@pytest.fixture(scope="module")
def lab_facts():
    return parse_gather_output(recorded(LAB))


def test_host_level_facts(lab_facts):
    assert lab_facts.hostname == "lab-0" and lab_facts.cpu_vendor == "GenuineIntel"
    assert lab_facts.iommu.acpi_table == "DMAR" and lab_facts.iommu.units == ["dmar0"]
    assert lab_facts.iommu.active and lab_facts.iommu.groups == 16
    assert "vela.test=1" in lab_facts.cmdline_args
    assert lab_facts.default_hugepage_kib == 2048


def test_numa_and_huge_pages(lab_facts):
    assert [(node.id, node.cpus) for node in lab_facts.numa_nodes] == [(0, [0]), (1, [1])]
    assert all(node.memory_kib > 2_000_000 for node in lab_facts.numa_nodes)
    # hugepages=1 on the command line: the kernel placed the one 1 GiB page on node 1.
    assert [node.pool(1048576).total for node in lab_facts.numa_nodes] == [0, 1]


def test_gpu_stand_in_and_nic_share_a_switch_on_their_numa_node(lab_facts):
    gpus = [d for d in lab_facts.pci.values() if d.vendor_device == "1af4:1110"]
    nics = [d for d in lab_facts.pci.values() if d.vendor_device == "8086:10c9"]
    assert [gpu.numa_node for gpu in gpus] == [0, 1] and [nic.numa_node for nic in nics] == [0, 1]
    for gpu, nic in zip(gpus, nics, strict=True):
        switch = lab_facts.upstream_switch(gpu.address)
        assert switch is not None and lab_facts.upstream_switch(nic.address) == switch
        assert lab_facts.device(switch).vendor_device == "104c:8232"
        assert nic.sriov_totalvfs == 7 and nic.sriov_numvfs == 0 and nic.driver == "igb"
        # The device's capability says 8; the igb driver lets the kernel offer only 7. sysfs
        # (what writing sriov_numvfs obeys) is the number that counts.
        assert nic.caps.sriov.total_vfs == 8 and nic.net
    root_ports = [d for d in lab_facts.pci.values() if d.port_type == "root_port"]
    assert root_ports and all(port.caps.acs.enabled() for port in root_ports)
    # QEMU's xio3130 switch ports have no ACS capability: each device shares its port's group.
    for gpu in gpus:
        port = lab_facts.device(gpu.parent)
        assert port.port_type == "downstream_port" and port.caps.acs is None
        assert port.iommu_group == gpu.iommu_group


def test_cut_or_corrupt_output_is_an_error():
    text = recorded(LAB)
    with pytest.raises(GatherOutputError, match="cut short"):
        parse_gather_output(text[: len(text) // 2].rsplit("\n", 1)[0])
    with pytest.raises(GatherOutputError, match="format"):
        parse_gather_output(text.replace("meta\t-\tformat\t1", "meta\t-\tformat\t9"))
    with pytest.raises(GatherOutputError, match="malformed"):
        parse_gather_output("meta\t-\tformat\t1\nnot a record\nmeta\t-\tend\tok\n")
    order, = [line for line in text.splitlines() if "\tconfig_order\t" in line]
    shorter = order.rsplit(" ", 1)[0]
    with pytest.raises(GatherOutputError, match="config space data"):
        parse_gather_output(text.replace(order, order + " 0000:99:00.0"))
    assert len(parse_gather_output(text.replace(order, shorter)).pci) == 22


def test_cpulist():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("") == []
