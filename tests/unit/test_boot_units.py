"""HostTuning's and SriovPool's boot units, installed together on one host as a cluster node has
them: checked by the real `systemd-analyze verify`, and booted by the fake kernel in the order
systemd would start them (host settings, then the VFs, then the VFs' settings)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from providers.host_tuning.provider import converge_desired, observe
from providers.host_tuning.spec import HostTuningArgs
from providers.sriov_pool.observe import PoolObservations, paths
from providers.sriov_pool.spec import SriovPoolArgs
from providers.sriov_pool.target import desired_target as pool_target
from providers.sriov_pool.target import find_pf
from tests.support.fakekernel import FakeKernel, KernelHost
from tests.support.hgx import hgx_a100
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _node(root: Path):
    """An HGX node with a 2-VF pool on its first NIC port, as SriovPool leaves it: the VFs
    there now, the pool's unit and script installed and enabled."""
    fake, layout = hgx_a100(nic_vfs=2, nic_ats=True,
                            grub_defaults=recorded("files/etc-default-grub-debian12.txt"))
    fake.write(root)
    kernel = FakeKernel(fake, root)
    host = KernelHost(kernel)
    tuning = HostTuningArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                            "firmware": {"enabled": False},
                                            "reboot": "allowed"})
    facts = observe(host, tuning).facts
    pool = SriovPoolArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                         "pf": layout.nic_pfs[0], "numVfs": 2})
    pf = find_pf(pool, facts, PoolObservations())
    target = pool_target(pool, facts, PoolObservations(), pf)
    for path, content in target.files.items():
        file = root / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
        file.chmod(0o755 if "/sbin/" in path else 0o644)
    link = root / paths(pool)["link"].lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"../{link.name}")
    return host, kernel, tuning, layout, target


def test_both_units_pass_systemd_analyze_verify(tmp_path):
    """The real systemd, on both units as installed: an ordering cycle (HostTuning's unit
    before sysinit.target, SriovPool's after it yet before HostTuning's) fails here."""
    if shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir():
        pytest.fail("systemd-analyze and the system's units are needed: run scripts/setup")
    root = tmp_path / "root"
    host, _, tuning, _, pool = _node(root)
    converge_desired(host, tuning.model_copy(update={"reboot": "never"}), {})
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    units = sorted(path.name for path in (root / "etc/systemd/system").glob("vela-*.service"))
    assert units == ["vela-host-tuning.service", Path(next(
        path for path in pool.files if path.endswith(".service"))).name]
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_boot_runs_host_settings_then_the_vfs_then_their_settings(tmp_path):
    """After a power cycle the VFs are gone until the pool's unit makes them again: HostTuning's
    unit must not touch them, and runs first (the PF's registers, vfio-pci loaded)."""
    host, kernel, tuning, layout, pool = _node(tmp_path / "root")
    converge_desired(host, tuning, {})
    assert kernel.boots >= 1
    kernel.reboot()
    assert kernel.unit_order()[0] == "vela-host-tuning.service"
    assert kernel.failed_units == [] and kernel.refusals == []
    vfs = sorted(path.name for path in
                 (tmp_path / "root/sys/bus/pci/devices" / layout.nic_pfs[0]).glob("virtfn*"))
    assert vfs == ["virtfn0", "virtfn1"]
    for register in pool.registers.values():  # the VFs' ATS, written once they exist
        config = (tmp_path / "root/sys/bus/pci/devices" / register.address / "config")
        value = int.from_bytes(config.read_bytes()[register.offset:register.offset + 2],
                               "little")
        assert value & register.mask == register.value
    assert pool.registers  # the test reads something
