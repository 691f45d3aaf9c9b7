"""A real emulated hypervisor host, booted and checked through the facts layer over SSH."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lab.hosts import Lab
from lab.machine import GPU_STAND_IN, SRIOV_NIC
from providers.facts import gather_facts
from providers.facts.cmdline import cmdline_value

pytestmark = pytest.mark.slow
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        lab.up(1)
        yield lab
    finally:
        lab.down()


def _facts(lab):
    return gather_facts(lab.ssh_host(lab.host(0)))


def _ids(device):
    return (device.vendor_id, device.device_id)


def test_booted_host_has_the_hgx_like_shape(lab):
    facts = _facts(lab)
    assert [node.id for node in facts.numa_nodes] == [0, 1]
    assert all(node.cpus and node.memory_kib for node in facts.numa_nodes)
    assert facts.iommu.acpi_table == "DMAR" and facts.iommu.active and facts.iommu.groups > 0
    assert all(device.iommu_group is not None for device in facts.pci.values())
    gpus = [device for device in facts.pci.values() if _ids(device) == GPU_STAND_IN]
    nics = [device for device in facts.pci.values() if _ids(device) == SRIOV_NIC]
    assert len(gpus) == len(nics) == 2
    for node, (gpu, nic) in enumerate(zip(gpus, nics)):
        switch = facts.upstream_switch(gpu.address)
        assert switch is not None and facts.upstream_switch(nic.address) == switch
        assert gpu.numa_node == nic.numa_node == node
        assert nic.sriov_totalvfs > 0 and nic.driver == "igb" and nic.net


def test_command_line_change_through_grub_is_active_after_reboot(lab):
    host = lab.ssh_host(lab.host(0))
    grub = host.read_file("/etc/default/grub").decode()
    line = next(line for line in grub.splitlines() if line.startswith("GRUB_CMDLINE_LINUX="))
    changed = grub.replace(line, line[:-1] + ' vela.lab_check=42"')
    host.write_file("/etc/default/grub", changed.encode())
    host.run(["update-grub"], timeout=300)
    assert cmdline_value(_facts(lab).cmdline, "vela.lab_check") is None  # not before a reboot
    lab.reboot(0)
    assert cmdline_value(_facts(lab).cmdline, "vela.lab_check") == "42"


def test_power_cycle_keeps_disk_port_and_identity(lab):
    before = lab.host(0)
    host = lab.ssh_host(before)
    host.write_file("/var/lib/vela-lab-marker", b"still here\n")
    host.run(["sync"])
    boot = lab.boot_id(before)
    lab.power_cycle(0)
    after = lab.host(0)
    assert (after.spec.ssh_port, after.host_key) == (before.spec.ssh_port, before.host_key)
    assert lab.boot_id(after) != boot
    assert lab.ssh_host(after).read_file("/var/lib/vela-lab-marker") == b"still here\n"


def test_cli_status_ssh_and_inventory(lab):
    env = {**os.environ, "VELA_LAB_DIR": str(lab.directory)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "lab", *args], cwd=PROJECT_ROOT,
                                       env=env, capture_output=True, text=True, timeout=120)
    status = run("status")
    assert status.returncode == 0 and "lab-0" in status.stdout and "SSH up" in status.stdout
    ssh = run("ssh", "0", "hostname")
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout.strip() == "lab-0"
    inventory = (lab.directory / "inventory.json").read_text()
    assert lab.host(0).host_key in inventory and str(lab.key_path) in inventory
