"""Boot-time behaviour of HostTuning and SriovPool on a real (emulated) host, through the
dynamic-provider gRPC server, on a lab host of this module's own (its boot configuration
changes). One test, four reboots of the host, two scenarios in turn:

IOMMU off on the first boot: the host boots with intel_iommu=off (the lab's Debian kernel turns
the emulated VT-d on by default, so it is set explicitly) -> one HostTuning create writes
intel_iommu=on in its place, reboots, and only then binds the GPU stand-in to vfio-pci, in
IOMMU groups that exist only after that boot.

Both boot units on that host: a pool on the igb PF is added, then a reboot from inside -> no
vela unit failed, both oneshot units active (exited), HostTuning's finished before the pool's
started, the VFs are back with the pool's count, `systemd-analyze verify` accepts both unit
files -> delete (pool first): the host as it was, intel_iommu=off again.

(They were two tests, each with its own create and delete: two reboots more, 6 minutes of CI.)

Inputs as the lab allows (see test_host_tuning_lab.py): no ACS capability on QEMU's switch
ports, no Max Read Request emulation; the igb is not a Mellanox NIC, so no firmware step.
"""

from __future__ import annotations

import time

import pytest

from providers.facts import gather_facts
from providers.host_tuning.observe import UNIT_FILE as TUNING_UNIT_FILE
from providers.host_tuning.observe import UNIT_NAME as TUNING_UNIT
from providers.host_tuning.provider import HostTuningProvider
from providers.sriov_pool.observe import paths as pool_paths
from providers.sriov_pool.observe import unit_name as pool_unit_name
from providers.sriov_pool.provider import SriovPoolProvider
from providers.sriov_pool.spec import SriovPoolArgs
from tests.lab.conftest import booted_lab, host_snapshot
from tests.support.provider_harness import ProviderServer, with_provider

pytestmark = pytest.mark.slow
PF, PF_NETDEV, NUM_VFS = "0000:44:00.0", "enp68s0", 4
# intel_iommu=off appended to GRUB_CMDLINE_LINUX_DEFAULT (empty in the lab image), as an
# administrator would, then the bootloader regenerated.
IOMMU_OFF = r'''
set -eu
if ! grep -q '^GRUB_CMDLINE_LINUX_DEFAULT=.*intel_iommu=off' /etc/default/grub; then
  sed -i -E 's/^(GRUB_CMDLINE_LINUX_DEFAULT=")(.*)"$/\1\2 intel_iommu=off"/;
             s/^(GRUB_CMDLINE_LINUX_DEFAULT=") /\1/' /etc/default/grub
fi
grep '^GRUB_CMDLINE_LINUX_DEFAULT=' /etc/default/grub
update-grub 2>&1
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(tmp_path_factory) as lab:
        yield lab


def _tuning_inputs(lab, lab_host) -> dict:
    return with_provider(HostTuningProvider(), {
        "address": "127.0.0.1", "port": lab_host.spec.ssh_port, "user": "root",
        "hostKey": lab_host.host_key, "gpuSelector": ["1af4:1110"], "nicSelector": ["8086:10c9"],
        "acs": False, "maxReadRequest": False, "reboot": "allowed", "rebootTimeout": 900})


def _pool_args(lab_host) -> dict:
    return {"address": "127.0.0.1", "port": lab_host.spec.ssh_port, "user": "root",
            "hostKey": lab_host.host_key, "pf": PF_NETDEV, "numVfs": NUM_VFS,
            "cluster": "lab", "node": "lab-0",
            "nicInventory": [{"address": PF, "interfaces": [PF_NETDEV], "sriovTotalVfs": 7}]}


def _server(lab, tmp_path) -> ProviderServer:
    return ProviderServer(config={"vela:sshPrivateKey": lab.key_path.read_text()},
                          log=tmp_path / "provider.log")


def _show(host, unit: str, *properties: str) -> dict[str, str]:
    text = host.run(["systemctl", "show", unit, *(f"-p{name}" for name in properties)]).text
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _cmdline(host) -> list[str]:
    return host.read_file("/proc/cmdline").decode().split()


def _assert_unchanged(before: list[str], after: list[str]) -> None:
    assert [line for line in after if line not in before] == []
    assert [line for line in before if line not in after] == []


def test_iommu_off_at_first_boot_then_both_boot_units_in_order(lab, tmp_path):
    started = time.monotonic()
    lab_host = lab.host(0)
    host = lab.ssh_host(lab_host)
    host.run_script(IOMMU_OFF, timeout=300)
    lab.reboot(0)
    assert "intel_iommu=off" in _cmdline(host)
    assert host.run(["ls", "-A", "/sys/kernel/iommu_groups"]).text.strip() == ""
    before = host_snapshot(host)
    pool_spec = SriovPoolArgs.model_validate(_pool_args(lab_host))
    pool_unit, pool_unit_file = pool_unit_name(pool_spec), pool_paths(pool_spec)["unit"]
    prepared = time.monotonic()

    with _server(lab, tmp_path) as server:
        tuning, failures = server.check("lab-0", {}, _tuning_inputs(lab, lab_host))
        assert failures == []
        tuning_id, tuning_outs = server.create("lab-0", tuning)
        tuned = time.monotonic()
        _assert_iommu_on_and_gpus_bound(host, tuning_outs)

        pool, failures = server.check("pool", {},
                                      with_provider(SriovPoolProvider(), _pool_args(lab_host)))
        assert failures == []
        pool_id, pool_outs = server.create("pool", pool)
        assert pool_outs["inSync"] and len(pool_outs["vfs"]) == NUM_VFS
        created = time.monotonic()

        lab.reboot(0)
        rebooted = time.monotonic()
        _assert_units_ran_in_order(host, pool_unit, pool_unit_file)
        dev = f"/sys/bus/pci/devices/{PF}"
        assert host.read_file(f"{dev}/sriov_numvfs").strip() == str(NUM_VFS).encode()
        facts = gather_facts(host)
        vfs = [vf["address"] for vf in pool_outs["vfs"]]
        assert {facts.device(vf).driver for vf in vfs} == {"vfio-pci"}
        assert {facts.device(gpu["address"]).driver
                for gpu in tuning_outs["gpus"]} == {"vfio-pci"}

        _, tuning_now = server.read("lab-0", tuning_id, tuning_outs)
        assert tuning_now["inSync"], tuning_now["drift"]
        _, pool_now = server.read("pool", pool_id, pool_outs)
        assert pool_now["inSync"], pool_now["drift"]

        server.delete("pool", pool_id, pool_now)
        server.delete("lab-0", tuning_id, tuning_now)
    assert "intel_iommu=off" in _cmdline(host)
    _assert_unchanged(before, host_snapshot(host))
    done = time.monotonic()
    print(f"\nprepare (intel_iommu=off, reboot) {prepared - started:.0f} s, tuning create "
          f"{tuned - prepared:.0f} s, pool create {created - tuned:.0f} s, reboot "
          f"{rebooted - created:.0f} s, checks and delete {done - rebooted:.0f} s, in all "
          f"{done - started:.0f} s")


def _assert_iommu_on_and_gpus_bound(host, outs: dict) -> None:
    """One create turned the IOMMU on (one reboot) and bound the GPUs in the new groups."""
    assert outs["inSync"] and not outs["pendingReboot"], (outs["drift"], outs["pendingReasons"])
    assert outs["reboots"] == 1
    assert outs["applied"]["vfio"], "no vfio binding: HostTuning would write no unit"
    cmdline = _cmdline(host)
    assert "intel_iommu=on" in cmdline and "intel_iommu=off" not in cmdline
    facts = gather_facts(host)  # verified independently of the provider
    assert facts.iommu.units and facts.iommu.groups > 0
    assert outs["gpus"] and outs["iommuGroups"]
    for gpu in outs["gpus"]:
        device = facts.device(gpu["address"])
        assert device.driver == "vfio-pci" and device.iommu_group is not None
        assert gpu["iommuGroup"] == device.iommu_group
        host.run(["test", "-c", f"/dev/vfio/{device.iommu_group}"])


def _assert_units_ran_in_order(host, pool_unit: str, pool_unit_file: str) -> None:
    """This boot: no vela unit failed, both ran once and succeeded, HostTuning's before the
    pool's, both unit files verify, and systemd broke no ordering cycle."""
    failed = host.run(["systemctl", "--failed", "--no-legend", "--plain"]).text
    assert "vela" not in failed, failed
    properties = ("ActiveState", "SubState", "Result", "ExecMainStatus",
                  "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic")
    tuning_state = _show(host, TUNING_UNIT, *properties)
    pool_state = _show(host, pool_unit, *properties)
    for state in (tuning_state, pool_state):
        assert (state["ActiveState"], state["SubState"], state["Result"],
                state["ExecMainStatus"]) == ("active", "exited", "success", "0"), state
    tuning_exit = int(tuning_state["ExecMainExitTimestampMonotonic"])
    pool_start = int(pool_state["ExecMainStartTimestampMonotonic"])
    assert 0 < tuning_exit <= pool_start, (tuning_state, pool_state)
    print(f"\n{TUNING_UNIT} exited at {tuning_exit / 1e6:.3f} s, {pool_unit} started at "
          f"{pool_start / 1e6:.3f} s and exited at "
          f"{int(pool_state['ExecMainExitTimestampMonotonic']) / 1e6:.3f} s (monotonic)")
    verified = host.run(["systemd-analyze", "verify", TUNING_UNIT_FILE, pool_unit_file],
                        check=False)
    assert verified.exit_code == 0, verified.error_text
    print(f"systemd-analyze verify: {verified.text.strip() or '(nothing)'} "
          f"{verified.error_text.strip() or '(nothing on stderr)'}")
    # What systemd itself said at this boot about the vela units: an ordering cycle is broken
    # at boot by dropping a job, and only this log shows which.
    said = [line for line in host.run(["journalctl", "-b", "-o", "cat", "_PID=1"]).text
            .splitlines() if "vela" in line]
    assert not [line for line in said if "cycle" in line], said
    print("systemd about vela this boot:\n  " + "\n  ".join(said))
