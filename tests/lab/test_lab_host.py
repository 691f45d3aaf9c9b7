"""A real emulated hypervisor host, booted and checked through the facts layer over SSH."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lab.machine import GPU_STAND_IN, SRIOV_NIC
from providers.facts import gather_facts
from providers.facts.cmdline import cmdline_value

pytestmark = pytest.mark.slow
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    all_nics = [device for device in facts.pci.values() if _ids(device) == SRIOV_NIC]
    nics = [nic for nic in all_nics if facts.upstream_switch(nic.address) is not None]
    isolated = [nic for nic in all_nics if facts.upstream_switch(nic.address) is None]
    assert len(gpus) == len(nics) == len(isolated) == 2
    # The NIC on its own root port sits alone in its IOMMU group (root ports have ACS).
    for nic in isolated:
        assert [d.address for d in facts.pci.values()
                if d.iommu_group == nic.iommu_group] == [nic.address]
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


def test_main_job_starts_the_lab_it_targets(lab, tmp_path):
    """scripts/up with a stand-in for the Pulumi CLI (the real one cannot be installed here):
    it must start the lab the dev stack names, hand the lab's key over as a secret, then run
    `pulumi up` on the dev stack."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stand_in = bin_dir / "pulumi"
    stand_in.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in
  "config get vela:labHosts --stack dev") echo 1 ;;
  "config get vela:sshPrivateKey --stack dev") exit 1 ;;
  "config set --secret vela:sshPrivateKey --stack dev") cat > {tmp_path / 'secret'} ;;
esac
""")
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "VELA_LAB_DIR": str(lab.directory), "PULUMI_BACKEND_URL": f"file://{tmp_path}",
           "PULUMI_CONFIG_PASSPHRASE": "test"}
    result = subprocess.run([os.path.join(PROJECT_ROOT, "scripts", "up"), "--yes"], env=env,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert lines[-1] == "up --stack dev --yes"
    assert "config set --secret vela:sshPrivateKey --stack dev" in lines
    assert (tmp_path / "secret").read_text() == lab.key_path.read_text()
    assert "lab-0" in result.stdout  # the lab reported its host
