"""The fake host builder: faithful trees, and refusal of hardware that cannot exist."""

from __future__ import annotations

import os

import pytest

from providers.errors import FactsError
from providers.facts import gather_facts
from providers.host import LocalHost
from tests.support.fakehost import FakeHost, ImpossibleHardware
from tests.support.hgx import hgx_a100


def _small_host() -> FakeHost:
    host = FakeHost()
    host.numa_node(0, "0-3", 16)
    return host


def test_hgx_fixture_seen_through_the_facts_layer(hgx):
    root, layout = hgx
    facts = gather_facts(LocalHost(str(root)))
    assert facts.cpu_vendor == "GenuineIntel"
    assert facts.iommu.acpi_table == "DMAR" and facts.iommu.active and facts.iommu.kind == "intel"
    assert [node.id for node in facts.numa_nodes] == [0, 1]
    assert [len(node.cpus) for node in facts.numa_nodes] == [80, 80]
    assert facts.numa_nodes[1].cpus[:2] == [40, 41] and facts.numa_nodes[1].cpus[-1] == 159
    assert all(node.memory_kib == 1024 ** 3 for node in facts.numa_nodes)
    assert facts.numa_nodes[0].pool(1048576).total == 0
    gpus = [dev for dev in facts.pci.values()
            if dev.vendor_id == 0x10DE and dev.class_code == 0x030200]
    assert [gpu.address for gpu in gpus] == layout.gpus
    assert [gpu.numa_node for gpu in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    for switch in layout.switches:
        members = switch.gpus + switch.nic_pfs
        assert {facts.upstream_switch(address) for address in members} == {switch.upstream}
        assert {facts.device(address).numa_node for address in members} == {switch.numa_node}
    assert len({facts.upstream_switch(gpu) for gpu in layout.gpus}) == 4


def test_hgx_nics_sriov_and_links(hgx):
    root, layout = hgx
    facts = gather_facts(LocalHost(str(root)))
    for switch in layout.switches:
        for pf_address, interface in zip(switch.nic_pfs, switch.nic_interfaces, strict=True):
            pf = facts.device(pf_address)
            assert pf.vendor_device == "15b3:101b" and pf.driver == "mlx5_core"
            assert pf.net == [interface]
            assert pf.sriov_totalvfs == 8 and pf.sriov_numvfs == 2
            assert pf.caps.sriov.total_vfs == 8 and pf.caps.sriov.vf_device_id == 0x101C
            assert [vf.index for vf in pf.virtfns] == [0, 1]
            for vf in pf.virtfns:
                device = facts.device(vf.address)
                assert device.physfn == pf_address and device.is_virtual_function
                assert device.vendor_device == "15b3:101c"
                assert device.iommu_group not in (None, pf.iommu_group)
                assert device.upstream == pf.upstream


def test_hgx_pcie_capabilities(hgx):
    root, layout = hgx
    facts = gather_facts(LocalHost(str(root)))
    gpu = facts.device(layout.gpus[0])
    assert gpu.caps.pcie.max_read_request == 512
    assert gpu.caps.ats is not None and not gpu.caps.ats.enabled
    path = facts.path_between(layout.gpus[0], layout.switches[0].nic_pfs[0])
    assert [facts.device(bridge).port_type for bridge in path] == \
        ["upstream_port", "downstream_port", "downstream_port"]
    for bridge in path[1:]:
        assert facts.device(bridge).caps.acs.enabled() >= {"source_validation",
                                                            "request_redirect"}
    nic = facts.device(layout.switches[0].nic_pfs[0])
    assert nic.caps.acs.supported() == set() and nic.caps.ats is None


def test_hgx_iommu_groups(hgx):
    root, layout = hgx
    facts = gather_facts(LocalHost(str(root)))
    groups = {}
    for device in facts.pci.values():
        groups.setdefault(device.iommu_group, []).append(device.address)
    for address in layout.gpus + layout.nic_pfs:
        assert groups[facts.device(address).iommu_group] == [address]  # alone: passable
    # The I350 has no ACS: its two functions share one group, as on real servers.
    assert groups[facts.device(layout.mgmt_nic[0]).iommu_group] == layout.mgmt_nic
    assert facts.iommu.groups == len(groups)


def test_without_acs_on_the_switch_each_device_joins_its_port_group(tmp_path):
    """The kernel's pci_device_group(): a device below a port whose ACS path is not enabled
    shares that port's group (Linux 6.1, as on Debian 12)."""
    host = FakeHost()
    host.numa_node(0, "0-7", 64)
    switch = host.switch(host.root_port(host.root_complex(0x10, 0), 1), 2, acs=(0x005F, 0))
    gpu, = host.endpoint(switch.downstream[0], vendor_id=0x10DE, device_id=0x20B2,
                         class_code=0x030200)
    nic, = host.endpoint(switch.downstream[1], vendor_id=0x15B3, device_id=0x101B,
                         class_code=0x020000)
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    for device, port in [(gpu, switch.downstream[0]), (nic, switch.downstream[1])]:
        assert facts.device(device.address).iommu_group == facts.device(port.address).iommu_group
    assert facts.device(gpu.address).iommu_group != facts.device(nic.address).iommu_group


def test_iommu_off_means_no_groups(tmp_path):
    host, _ = hgx_a100(iommu_active=False)
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    assert facts.iommu.acpi_table == "DMAR" and not facts.iommu.active
    assert facts.iommu.groups == 0 and facts.iommu.units == []
    assert all(device.iommu_group is None for device in facts.pci.values())


def test_hugepages_and_cmdline(tmp_path):
    host, _ = hgx_a100(hugepages_1g_per_node=16, cmdline="ro intel_iommu=on iommu=pt")
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    assert [node.pool(1048576).total for node in facts.numa_nodes] == [16, 16]
    assert facts.cmdline_args == ["ro", "intel_iommu=on", "iommu=pt"]
    assert facts.default_hugepage_kib == 2048


def test_amd_host(tmp_path):
    host = FakeHost(cpu_vendor="AuthenticAMD", iommu_table="IVRS")
    host.numa_node(0, "0-7", 32)
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    assert facts.cpu_vendor == "AuthenticAMD" and facts.iommu.kind == "amd"
    assert facts.iommu.units == ["ivhd0"]


IMPOSSIBLE = {
    "AMD IOMMU on an Intel CPU": lambda: FakeHost(cpu_vendor="GenuineIntel", iommu_table="IVRS"),
    "active IOMMU without ACPI table": lambda: FakeHost(iommu_table=None, iommu_active=True),
    "unknown CPU vendor": lambda: FakeHost(cpu_vendor="Cyrix"),
    "same NUMA node twice": lambda: _small_host().numa_node(0, "4-7", 16),
    "CPU on two nodes": lambda: _small_host().numa_node(1, "3-7", 16),
    "huge pages beyond memory": lambda: FakeHost().numa_node(0, "0-3", 16, {1048576: 17}),
    "root complex on a missing node": lambda: _small_host().root_complex(0x10, numa_node=1),
    "same root complex twice": lambda: [_h := _small_host(), _h.root_complex(0, 0),
                                        _h.root_complex(0, 0)],
}


@pytest.mark.parametrize("build", IMPOSSIBLE.values(), ids=IMPOSSIBLE.keys())
def test_refuses_impossible_hosts(build):
    with pytest.raises(ImpossibleHardware):
        build()


def test_refuses_impossible_pci_trees():
    host = _small_host()
    complex_ = host.root_complex(0x10, 0)
    port = host.root_port(complex_, 1)
    with pytest.raises(ImpossibleHardware, match="two functions"):
        host.root_port(complex_, 1)
    plain, = host.endpoint(port, vendor_id=0x8086, device_id=0x10D3, class_code=0x020000)
    with pytest.raises(ImpossibleHardware, match="only below a root port"):
        host.endpoint(plain, vendor_id=0x8086, device_id=0x10D3, class_code=0x020000)
    with pytest.raises(ImpossibleHardware, match="no SR-IOV"):
        host.add_vfs(plain, 1)
    with pytest.raises(ImpossibleHardware, match="1 to 8 functions"):
        host.endpoint(host.root_port(complex_, 2), vendor_id=1, device_id=1, class_code=0,
                      functions=9)
    with pytest.raises(ImpossibleHardware, match="device 0-1f"):
        host.root_port(complex_, 0x20)
    with pytest.raises(ImpossibleHardware, match="only device 0"):
        host.endpoint(host.root_port(complex_, 4), vendor_id=0x8086, device_id=0x10D3,
                      class_code=0x020000, device=1)
    switch = host.switch(host.root_port(complex_, 3), 2)
    with pytest.raises(ImpossibleHardware, match="upstream_port"):
        host.switch(switch.upstream, 1)


def test_refuses_impossible_vfs():
    host = _small_host()
    port = host.root_port(host.root_complex(0x10, 0), 1)
    pf, = host.endpoint(port, vendor_id=0x8086, device_id=0x1521, class_code=0x020000,
                        sriov_total_vfs=7, sriov_vf_device=0x1520, net=["eno1"])
    with pytest.raises(ImpossibleHardware, match="at most 7"):
        host.add_vfs(pf, 8)
    vfs = host.add_vfs(pf, 2)
    with pytest.raises(ImpossibleHardware, match="needs 0 first"):
        host.add_vfs(pf, 3)
    with pytest.raises(ImpossibleHardware, match="VFs cannot have VFs"):
        host.add_vfs(vfs[0], 1)
    with pytest.raises(ImpossibleHardware, match="taken"):
        host.endpoint(host.root_port(host.complexes[0], 2), vendor_id=1, device_id=1,
                      class_code=0x020000, net=["eno1"])
    with pytest.raises(ImpossibleHardware, match="both a TotalVFs"):
        host.endpoint(host.root_port(host.complexes[0], 3), vendor_id=1, device_id=1,
                      class_code=0x020000, sriov_total_vfs=4)


# -- a function that vanishes while the facts are read --------------------------------------------
# On a real host the engine runs a node's pools at once: one pool's VFs can go (sriov_numvfs
# -> 0 removes their sysfs entries) while another pool's facts are read. A config file listed
# and gone before gzip reads it left the gzip stream one member short, every later function's
# config space shifted (a CI run: "config space data ends before 0000:85:00.0"). Here gzip
# meets a directory where the config file was: it skips it and fails, as for a vanished file.

def _host_with_a_function_being_removed(tmp_path):
    host = _small_host()
    nic, = host.endpoint(host.root_port(host.root_complex(0x10, 0), 1), vendor_id=0x8086,
                         device_id=0x10C9, class_code=0x020000)
    root = host.write(tmp_path / "root")
    config = (root / "sys/bus/pci/devices" / nic.address / "config").resolve()
    saved = tmp_path / "config.saved"
    config.rename(saved)
    config.mkdir()
    return root, nic, config, saved


def _stub_sleep(tmp_path, monkeypatch, action: str) -> None:
    """`sleep` between readings, as the script calls it, doing `action` instead of waiting."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "sleep").write_text(f"#!/bin/sh\necho slept >> {tmp_path}/slept\n{action}\n")
    (stubs / "sleep").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")


def test_facts_are_read_again_when_a_function_went_away_meanwhile(tmp_path, monkeypatch):
    root, nic, config, saved = _host_with_a_function_being_removed(tmp_path)
    # The other operation is done by the next reading (here: the config file is back).
    _stub_sleep(tmp_path, monkeypatch, f"rmdir {config} && mv {saved} {config}")
    facts = gather_facts(LocalHost(str(root)))
    assert (tmp_path / "slept").read_text() == "slept\n"  # read twice, a pause between
    device = facts.device(nic.address)
    assert device.vendor_id == 0x8086 and device.caps.pcie is not None


def test_functions_that_keep_changing_are_an_error_saying_so(tmp_path, monkeypatch):
    root, _, _, _ = _host_with_a_function_being_removed(tmp_path)
    _stub_sleep(tmp_path, monkeypatch, ":")
    with pytest.raises(FactsError, match=r"PCI functions kept changing while vela read them "
                                         r"\(3 readings a second apart"):
        gather_facts(LocalHost(str(root)))
    assert (tmp_path / "slept").read_text() == "slept\nslept\n"


def test_a_function_gone_after_its_attributes_were_read_is_not_reported(tmp_path, monkeypatch):
    host = _small_host()
    port = host.root_port(host.root_complex(0x10, 0), 1)
    nic, = host.endpoint(port, vendor_id=0x8086, device_id=0x10C9, class_code=0x020000)
    root = host.write(tmp_path / "root")
    entry = root / "sys/bus/pci/devices" / nic.address
    # Its sysfs entry goes while gzip runs (the stub removes it, then runs the real gzip), so
    # gzip succeeds but the listing is not the one the attributes came from.
    _stub_sleep(tmp_path, monkeypatch, ":")
    real = next(path for path in os.environ["PATH"].split(":")[1:]
                if os.access(os.path.join(path, "gzip"), os.X_OK))
    gzip = tmp_path / "stubs" / "gzip"
    gzip.write_text(f"#!/bin/sh\nrm -f {entry}\nexec {real}/gzip \"$@\"\n")
    gzip.chmod(0o755)
    facts = gather_facts(LocalHost(str(root)))
    assert (tmp_path / "slept").read_text() == "slept\n"
    assert nic.address not in facts.pci and port.address in facts.pci
