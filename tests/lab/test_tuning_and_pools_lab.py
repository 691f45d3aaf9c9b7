"""HostTuning and SriovPool on a real (emulated) hypervisor host, through the dynamic-provider
gRPC server: one test, on the lab's shared host, five reboots, each phase checked as it ends.

1. IOMMU off on the first boot vela sees: intel_iommu=off is added the way an administrator
   would (/etc/default/grub, update-grub); it is not in effect before the reboot, and is after
   (the lab's Debian kernel turns the emulated VT-d on by default, so it is set explicitly).
2. HostTuning create, one call: writes intel_iommu=on in its place, 1 GiB pages per node, the
   NIC firmware's ADVANCED_PCI_SETTINGS (the mstconfig stand-in, installed on the host like the
   real tool) and a sysctl; reboots; only then binds the GPU stand-ins to vfio-pci, in IOMMU
   groups that exist only after that boot, and writes MAX_ACC_OUT_READ, which the firmware
   offers only after ADVANCED_PCI_SETTINGS took effect; reboots again; verified on the host
   independently of the provider. Applied again: no change, one read of the host.
3. SriovPool on the igb PF beside the GPU: 4 VFs bound to vfio-pci (outputs match sysfs and
   `ip link`), then 2 (the first two keep their MACs); a change while a libvirt domain holds a
   VF is refused with the domain named and nothing changed.
4. A reboot from inside: both boot units ran, HostTuning's before the pool's, no vela unit
   failed and systemd broke no ordering cycle, `systemd-analyze verify` accepts both unit
   files; the VFs are back with the same MACs; both resources read in sync; the pool applied
   again changes nothing with one read.
5. Drift: a sysctl changed behind vela's back shows in refresh and in diff.
6. Delete (pool first): the host as it was, intel_iommu=off again, the pool's network gone.

The lab's limits shape the inputs: QEMU's switch ports have no ACS capability (acs: false) and
QEMU does not emulate Max Read Request (maxReadRequest: false).

(These were three modules, each with its own host or its own create and delete: five reboots
more, 13 minutes of CI.) The test leaves intel_iommu=off in the shared host's GRUB defaults, so
it is the last user of that host (pytest runs test_lab_host.py before it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from providers.facts import gather_facts
from providers.host_tuning.observe import UNIT_FILE as TUNING_UNIT_FILE
from providers.host_tuning.observe import UNIT_NAME as TUNING_UNIT
from providers.host_tuning.provider import HostTuningProvider
from providers.sriov_pool.observe import paths as pool_paths
from providers.sriov_pool.observe import unit_name as pool_unit_name
from providers.sriov_pool.provider import SriovPoolProvider
from providers.sriov_pool.spec import SriovPoolArgs
from tests.lab.conftest import host_snapshot
from tests.support.provider_harness import ProviderCallError, ProviderServer, with_provider

pytestmark = pytest.mark.slow
PF, PF_NETDEV = "0000:44:00.0", "enp68s0"
STANDIN = Path(__file__).resolve().parents[1] / "support" / "standins" / "mstconfig-standin"
STANDIN_ON_HOST = "/usr/local/sbin/mstconfig-standin"
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
# A libvirt domain holding the pool's first VF (defined, not running: enough to hold it).
HOLDS_A_VF = """<domain type='qemu'><name>holds-a-vf</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<hostdev mode='subsystem' type='pci' managed='yes'><source>
<address domain='0x0000' bus='0x44' slot='0x10' function='0x0'/></source></hostdev>
</devices></domain>"""


def _connection(lab_host) -> dict:
    return {"address": "127.0.0.1", "port": lab_host.spec.ssh_port, "user": "root",
            "hostKey": lab_host.host_key}


def _tuning_inputs(lab_host) -> dict:
    return with_provider(HostTuningProvider(), {
        **_connection(lab_host), "gpuSelector": ["1af4:1110"], "nicSelector": ["8086:10c9"],
        "acs": False, "maxReadRequest": False, "hugepages": {"perNode": {"0": 1, "1": 1}},
        "firmware": {"enabled": True, "tool": STANDIN_ON_HOST, "numVfs": 4},
        "sysctls": {"vm.swappiness": "10"}, "reboot": "allowed", "rebootTimeout": 900})


def _pool_args(lab_host) -> dict:
    return {**_connection(lab_host), "pf": PF_NETDEV, "numVfs": 4, "cluster": "lab",
            "node": "lab-0", "network": {"name": "vela-pool"},
            "nicInventory": [{"address": PF, "interfaces": [PF_NETDEV], "sriovTotalVfs": 7}],
            "releaseTimeout": 10}  # the domain holding a VF below stays: refuse soon


def _cmdline(host) -> list[str]:
    return host.read_file("/proc/cmdline").decode().split()


def _sessions(host) -> int:
    """Commands sshd started since boot (this one included)."""
    text = host.run(["journalctl", "-t", "sshd", "--no-pager", "-o", "cat"]).text
    return text.count("Starting session: command")


def _networks(host) -> list[str]:
    return sorted(host.run(["virsh", "-q", "net-list", "--all", "--name"]).text.split())


def _assert_unchanged(before: list[str], after: list[str]) -> None:
    assert [line for line in after if line not in before] == []
    assert [line for line in before if line not in after] == []


@pytest.fixture
def mstconfig_standin(lab):
    """The firmware tool on the host, as the real one would be installed; removed afterwards."""
    host = lab.ssh_host(lab.host(0))
    host.write_file(STANDIN_ON_HOST, STANDIN.read_bytes(), mode=0o755)
    yield
    host.run(["rm", "-rf", STANDIN_ON_HOST, "/var/lib/mstconfig-standin"])


def test_iommu_off_then_tuning_pool_boot_units_drift_and_delete(lab, mstconfig_standin,
                                                                  tmp_path):
    times = {"started": time.monotonic()}
    lab_host = lab.host(0)
    host = lab.ssh_host(lab_host)
    host.run_script(IOMMU_OFF, timeout=300)
    assert "intel_iommu=off" not in _cmdline(host)  # not before a reboot
    lab.reboot(0)
    assert "intel_iommu=off" in _cmdline(host)
    assert host.run(["ls", "-A", "/sys/kernel/iommu_groups"]).text.strip() == ""
    before, networks = host_snapshot(host), _networks(host)
    pool_spec = SriovPoolArgs.model_validate(_pool_args(lab_host))
    pool_unit, pool_unit_file = pool_unit_name(pool_spec), pool_paths(pool_spec)["unit"]
    times["IOMMU off"] = time.monotonic()

    with ProviderServer(config={"vela:sshPrivateKey": lab.key_path.read_text()},
                        log=tmp_path / "provider.log") as server:
        # -- HostTuning: one create from IOMMU off to verified, then again: nothing to do ------
        tuning, failures = server.check("lab-0", {}, _tuning_inputs(lab_host))
        assert failures == []
        tuning_id, tuning_outs = server.create("lab-0", tuning)
        _assert_tuned(host, tuning_outs)
        sessions = _sessions(host)
        again = server.update("lab-0", tuning_id, tuning_outs, tuning)
        assert (_sessions(host) - sessions) == 2  # the update's one read, and this count
        assert again["changes"] == [] and again["reboots"] == 0 and again["inSync"]
        assert server.diff("lab-0", tuning_id, again, tuning).changes is False
        times["tuning create and again"] = time.monotonic()

        # -- SriovPool: 4 VFs, then 2; refused while a domain holds one -----------------------
        pool, failures = server.check("pool", {},
                                      with_provider(SriovPoolProvider(), _pool_args(lab_host)))
        assert failures == []
        pool_id, pool_outs = server.create("pool", pool)
        _assert_vfs_as_sysfs_says(host, pool_outs, 4)
        assert "vela-pool" in _networks(host)
        macs = {vf["index"]: vf["mac"] for vf in pool_outs["vfs"]}
        two = {**pool, "numVfs": 2}
        pool_outs = server.update("pool", pool_id, pool_outs, two)
        _assert_vfs_as_sysfs_says(host, pool_outs, 2)
        assert {vf["index"]: vf["mac"] for vf in pool_outs["vfs"]} == {0: macs[0], 1: macs[1]}
        _assert_refused_while_a_domain_holds_a_vf(server, host, pool_id, pool_outs, two)
        times["pool create, update, refusal"] = time.monotonic()

        # -- a reboot: both boot units, in order; the VFs and their MACs are back -------------
        lab.reboot(0)
        times["reboot"] = time.monotonic()
        _assert_units_ran_in_order(host, pool_unit, pool_unit_file)
        assert _vf_macs(host) == {"0": macs[0], "1": macs[1]}
        facts = gather_facts(host)
        assert {facts.device(gpu["address"]).driver
                for gpu in tuning_outs["gpus"]} == {"vfio-pci"}
        _, tuning_now = server.read("lab-0", tuning_id, again)
        assert tuning_now["inSync"], tuning_now["drift"]
        _, pool_now = server.read("pool", pool_id, pool_outs)
        assert pool_now["inSync"], pool_now["drift"]
        _assert_vfs_as_sysfs_says(host, pool_now, 2)
        sessions = _sessions(host)
        pool_again = server.update("pool", pool_id, pool_now, two)
        assert (_sessions(host) - sessions) == 2
        assert pool_again["changes"] == [] and pool_again["inSync"]

        # -- drift: refresh and diff see a setting changed behind vela's back -----------------
        host.run(["sysctl", "-q", "-w", "vm.swappiness=33"])
        _, drifted = server.read("lab-0", tuning_id, tuning_now)
        assert drifted["inSync"] is False
        assert any("vm.swappiness" in drift for drift in drifted["drift"])
        assert server.diff("lab-0", tuning_id, drifted, tuning).changes is True

        # -- delete, the pool first: the host as it was --------------------------------------
        server.delete("pool", pool_id, pool_again)
        server.delete("lab-0", tuning_id, drifted)
    assert "intel_iommu=off" in _cmdline(host)
    _assert_unchanged(before, host_snapshot(host))
    assert _networks(host) == networks
    times["checks, drift and delete"] = time.monotonic()
    steps = list(times.items())
    print("\n" + ", ".join(f"{name} {at - steps[index][1]:.0f} s"
                           for index, (name, at) in enumerate(steps[1:])) +
          f", in all {steps[-1][1] - steps[0][1]:.0f} s")


def _assert_tuned(host, outs: dict) -> None:
    """One create turned the IOMMU on and bound the GPUs in the new groups (first reboot),
    then set the firmware value only the first reboot's firmware offers (second reboot)."""
    assert outs["inSync"] and not outs["pendingReboot"], (outs["drift"], outs["pendingReasons"])
    assert outs["reboots"] == 2
    assert outs["applied"]["vfio"], "no vfio binding: HostTuning would write no unit"
    assert any(change.startswith("firmware") and "MAX_ACC_OUT_READ=44" in change
               for change in outs["changes"]), outs["changes"]
    cmdline = _cmdline(host)
    assert "intel_iommu=on" in cmdline and "intel_iommu=off" not in cmdline
    facts = gather_facts(host)  # verified independently of the provider
    for token in ["iommu=pt", "vfio-pci.ids=1af4:1110", "hugepages=0:1,1:1",
                  "modprobe.blacklist=nouveau"]:
        assert token in facts.cmdline_args
    assert facts.iommu.units and facts.iommu.groups > 0
    assert outs["gpus"] and outs["iommuGroups"]
    for node, gpu in enumerate(outs["gpus"]):
        assert gpu["vendorDevice"] == "1af4:1110" and gpu["numaNode"] == node
        nic = next(n for n in outs["nics"] if n["address"] == gpu["pairedNic"])
        assert nic["switch"] == gpu["switch"] and nic["numaNode"] == node
        device = facts.device(gpu["address"])
        assert device.driver == "vfio-pci" and device.iommu_group is not None
        assert gpu["iommuGroup"] == device.iommu_group
        host.run(["test", "-c", f"/dev/vfio/{device.iommu_group}"])
    assert [node.pool(1048576).total for node in facts.numa_nodes] == [1, 1]
    assert host.read_file("/proc/sys/vm/swappiness").strip() == b"10"
    firmware = host.run([STANDIN_ON_HOST, "-d", outs["nics"][0]["address"], "-e", "q"]).text
    assert "MAX_ACC_OUT_READ" in firmware and "True(1)" in firmware


def _vf_macs(host) -> dict[str, str]:
    """VF index -> MAC, as `ip -j link` reports them."""
    link = json.loads(host.run(["ip", "-j", "-d", "link", "show", "dev", PF_NETDEV]).text)[0]
    return {str(vf["vf"]): vf["address"] for vf in link.get("vfinfo_list", [])}


def _assert_vfs_as_sysfs_says(host, outs: dict, count: int) -> None:
    assert len(outs["vfs"]) == count and outs["pfDevice"]["numVfs"] == count
    assert host.read_file(f"/sys/bus/pci/devices/{PF}/sriov_numvfs").strip() == \
        str(count).encode()
    macs = _vf_macs(host)
    for vf in outs["vfs"]:
        link = host.run(["readlink", f"/sys/bus/pci/devices/{PF}/virtfn{int(vf['index'])}"]).text
        assert link.strip().endswith(vf["address"])
        assert macs[str(int(vf["index"]))] == vf["mac"]
        assert vf["driver"] == "vfio-pci" and vf["numaNode"] == 0
        assert vf["switch"] == outs["pfDevice"]["switch"] is not None
        host.run(["test", "-c", vf["vfioDevice"]])


def _assert_refused_while_a_domain_holds_a_vf(server, host, pool_id: str, outs: dict,
                                              inputs: dict) -> None:
    host.write_file("/run/holds-a-vf.xml", HOLDS_A_VF.encode())
    host.run(["virsh", "define", "/run/holds-a-vf.xml"])
    with pytest.raises(ProviderCallError) as refused:
        server.update("pool", pool_id, outs, {**inputs, "numVfs": 3})
    assert "holds-a-vf (0000:44:10.0)" in refused.value.message
    assert "Nothing was changed" in refused.value.message
    assert host.read_file(f"/sys/bus/pci/devices/{PF}/sriov_numvfs").strip() == b"2"
    assert "holds-a-vf" in host.run(["virsh", "-q", "list", "--all", "--name"]).text
    host.run(["virsh", "undefine", "holds-a-vf"])


def _show(host, unit: str, *properties: str) -> dict[str, str]:
    text = host.run(["systemctl", "show", unit, *(f"-p{name}" for name in properties)]).text
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


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
