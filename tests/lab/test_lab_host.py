"""A real emulated hypervisor host, booted and checked through the facts layer over SSH. (That a
command line changed through GRUB is in effect after a reboot, and not before, is the first step
of test_tuning_pools_and_guests_lab.py, on this same host.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.machine import GPU_STAND_IN, SRIOV_NIC
from providers.facts import gather_facts

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
    # Where lab/machine.py's bus numbering puts them: the expanders' root buses 0x40 and 0x80,
    # numbered depth first below them by the firmware.
    assert [gpu.address for gpu in gpus] == ["0000:43:00.0", "0000:83:00.0"]
    assert [nic.address for nic in nics] == ["0000:44:00.0", "0000:84:00.0"]
    assert [nic.address for nic in isolated] == ["0000:45:00.0", "0000:85:00.0"]
    # The NIC on its own root port sits alone in its IOMMU group (root ports have ACS).
    for nic in isolated:
        assert [d.address for d in facts.pci.values()
                if d.iommu_group == nic.iommu_group] == [nic.address]
    for node, (gpu, nic) in enumerate(zip(gpus, nics, strict=True)):
        switch = facts.upstream_switch(gpu.address)
        assert switch is not None and facts.upstream_switch(nic.address) == switch
        assert gpu.numa_node == nic.numa_node == node
        assert nic.sriov_totalvfs > 0 and nic.driver == "igb" and nic.net


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

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lab", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    status = run("status")
    assert status.returncode == 0 and "lab-0" in status.stdout and "SSH up" in status.stdout
    ssh = run("ssh", "0", "hostname")
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout.strip() == "lab-0"
    inventory = (lab.directory / "inventory.json").read_text()
    assert lab.host(0).host_key in inventory and str(lab.key_path) in inventory


def test_main_job_starts_the_lab_it_targets(lab, tmp_path):
    """scripts/up as a user runs it, with the real CLI, on a copy of the project whose dev stack
    targets this test's lab (1 host, so no second host boots): it starts the lab (the running
    host is kept), hands the lab's key to the stack as a secret, and previews the dev stack
    through the real engine; with no terminal to confirm, nothing is changed."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ["Pulumi.yaml", "__main__.py", "requirements.txt"]:
        shutil.copy(os.path.join(PROJECT_ROOT, name), project / name)
    for package in ["scripts", "providers", "components", "lab"]:
        shutil.copytree(os.path.join(PROJECT_ROOT, package), project / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    dev = Path(PROJECT_ROOT, "Pulumi.dev.yaml").read_text()
    (project / "Pulumi.dev.yaml").write_text(dev.replace('vela:labHosts: "2"',
                                                         'vela:labHosts: "1"'))
    (project / ".venv").symlink_to(os.path.join(PROJECT_ROOT, ".venv"))
    (project / ".lab").symlink_to(lab.directory)
    env = {key: value for key, value in os.environ.items() if key != "VELA_LAB_DIR"}
    env.update({"PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
                "PULUMI_CONFIG_PASSPHRASE": "test", "PULUMI_HOME": str(tmp_path / "home")})
    (tmp_path / "state").mkdir()
    result = subprocess.run([str(project / "scripts" / "up")], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not a terminal, so nothing was changed; pass --yes" in result.stderr
    assert "lab-0" in result.stdout  # the lab reported its host, kept running
    for name in ["lab-0-host", "lab-0-pci-0000-45-00-0", "lab-0-pci-0000-85-00-0", "lab-0-vm0",
                 "lab-0-vm1"]:
        assert re.search(rf"\+ .*{name}\s+create", result.stdout), result.stdout
    assert "vela:sshPrivateKey:\n    secure: " in (project / "Pulumi.dev.yaml").read_text()
    assert lab.key_path.read_text().splitlines()[1] not in (project / "Pulumi.dev.yaml").read_text()
