"""HostTuning, SriovPool and GpuVm on a real (emulated) hypervisor host, through the
dynamic-provider gRPC server: one test, on the lab's shared host, four reboots and one nested
guest boot, each phase checked as it ends.

1. IOMMU off on the first boot vela sees: intel_iommu=off is added the way an administrator
   would (/etc/default/grub, update-grub); it is not in effect before the reboot, and is after
   (the lab's Debian kernel turns the emulated VT-d on by default, so it is set explicitly).
2. HostTuning create, one call: writes intel_iommu=on in its place, 1 GiB pages per node, the
   NIC firmware's ADVANCED_PCI_SETTINGS (the mstconfig stand-in, installed on the host like the
   real tool) and a sysctl; reboots; only then binds the GPU stand-ins to vfio-pci, in IOMMU
   groups that exist only after that boot, and writes MAX_ACC_OUT_READ, which the firmware
   offers only after ADVANCED_PCI_SETTINGS took effect; reboots again; verified on the host
   independently of the provider. Applied again: no change, one read of the host.
3. SriovPool on the igb on socket 0's own root port (alone in its IOMMU group, so its VFs can
   be passed through: QEMU's switch ports have no ACS): 4 VFs bound to vfio-pci (outputs match
   sysfs and `ip link`), then 2 (the first two keep their MACs).
4. Two guests created at the same moment, one per socket (hostShare): the host's placement lock
   makes one define after the other, with what the first took in view. The first takes socket
   0's GPU stand-in, the pool's first VF and socket 0's CPU, and is started (waitForAddress:
   false: its boot is checked after the host's reboot below); the second takes socket 1's GPU
   and CPU and is only defined (`start: false`). Applied again, nothing changes and refresh
   reads both in sync; a guest wanting a held GPU and one wanting a CPU both hold fail clearly,
   leaving nothing behind; a pool change while the first guest holds a VF is refused with the
   guest named and nothing changed.
5. The reboot guard: HostTuning gives node 1's 1 GiB page back, a change of the command line and
   so a reboot: refused, with nothing changed, while a guest vela did not make runs; without it,
   vela's running guest is stopped by vela before the reboot and started after it; the guest
   that was not running stays off.
6. The boot that followed: both boot units ran, HostTuning's before the pool's, no vela unit
   failed and systemd broke no ordering cycle, `systemd-analyze verify` accepts both unit
   files; the VFs are back with the same MACs; the resources read in sync; the pool applied
   again changes nothing with one read. Drift: a sysctl changed behind vela's back shows in
   refresh and in diff.
7. The guest's boot, started by vela after the host's: younger than the host's boot, its
   devices on its guest NUMA node 0, its VF named as the NCCL topology file and environment
   name it, the recipe's MTU, txqueuelen and sysctls and the topology file where NCCL reads it,
   all from the guest's boot-time tuning (vela did nothing inside it after the reboot); it
   takes a lease and answers pings.
8. Delete (guests, pool, then tuning): the host as it was, intel_iommu=off again, the pool's
   network and vela's volumes gone.

The lab's limits shape the inputs: QEMU's switch ports have no ACS capability (acs: false) and
QEMU does not emulate Max Read Request (maxReadRequest: false). Under TCG inside a TCG host a
nested guest boots in 7-10 min, so one boots, once, after the host's reboot (the guest's first
boot is cut short by the guard, a guest vela starts like any other); the lab's busybox guest
ignores the ACPI power button, so vela powers it off at its shutdownTimeout. (These were five
modules, each with its own host or its own create and delete: CI's time ran out in them.) The
test leaves intel_iommu=off in the shared host's GRUB defaults, so it is the last user of that
host (pytest runs test_lab_host.py before it).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from components.runner import PROJECT_ROOT
from providers.facts import gather_facts
from providers.gpu_vm.provider import GpuVmProvider
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
# Per host NUMA node: the GPU stand-in; the pool's PF is socket 0's igb on its own root port.
GPUS = ["0000:43:00.0", "0000:83:00.0"]
PF = "0000:45:00.0"
STANDIN = Path(__file__).resolve().parents[1] / "support" / "standins" / "mstconfig-standin"
STANDIN_ON_HOST = "/usr/local/sbin/mstconfig-standin"
# How long a nested guest may take to boot (TCG inside a TCG host), to a READY or an address.
GUEST_WAIT = 1200
# The lab's minimal guest as the dev stack boots it (kernel, initramfs, command line).
LAB_GUEST_BOOT = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text()
                                )["config"]["vela:kernelBoot"]
GUESTS = ["lab-vm0", "lab-vm1"]
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
# A guest vela did not make: the lab's minimal kernel and initramfs, no devices.
TENANT = """<domain type='qemu'><name>tenant</name><memory unit='MiB'>160</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type>
<kernel>/usr/local/share/vela-guest/vmlinux</kernel>
<initrd>/usr/local/share/vela-guest/initrd.cpio</initrd><cmdline>console=ttyS0</cmdline></os>
<devices><memballoon model='none'/></devices></domain>"""


def _connection(lab_host) -> dict:
    return {"address": "127.0.0.1", "port": lab_host.spec.ssh_port, "user": "root",
            "hostKey": lab_host.host_key}


def _tuning_inputs(lab_host, **changed) -> dict:
    return with_provider(HostTuningProvider(), {
        **_connection(lab_host), "gpuSelector": ["1af4:1110"], "nicSelector": ["8086:10c9"],
        "acs": False, "maxReadRequest": False, "hugepages": {"perNode": {"0": 1, "1": 1}},
        "firmware": {"enabled": True, "tool": STANDIN_ON_HOST, "numVfs": 4},
        "sysctls": {"vm.swappiness": "10"}, "reboot": "allowed", "rebootTimeout": 900,
        **changed})


def _pool_args(lab_host, netdev: str) -> dict:
    return {**_connection(lab_host), "pf": netdev, "numVfs": 4, "cluster": "lab",
            "node": "lab-0", "network": {"name": "vela-pool"},
            "nicInventory": [{"address": PF, "interfaces": [netdev], "sriovTotalVfs": 7}],
            "releaseTimeout": 10}  # the guest holding a VF below keeps it: refuse soon


def _guest_inputs(lab_host, index: int, **values) -> dict:
    """One of two guests sharing the host by socket: one vCPU, 1 GiB on 1 GiB pages, its
    socket's GPU stand-in; TCG inside the TCG host (qemu64)."""
    return with_provider(GpuVmProvider(), {
        **_connection(lab_host), "name": GUESTS[index], "vcpus": 1, "memoryGib": 1, "gpus": 1,
        "gpuSelector": ["1af4:1110"], "reservedCpus": 0, "kernelBoot": LAB_GUEST_BOOT,
        "domainType": "qemu", "cpuModel": "qemu64", "waitTimeout": GUEST_WAIT,
        "shutdownTimeout": 20,  # the lab's busybox guest ignores ACPI shutdown
        "hostShare": {"index": index, "count": 2}, **values})


def _cmdline(host) -> list[str]:
    return host.read_file("/proc/cmdline").decode().split()


def _sessions(host) -> int:
    """Commands sshd started since boot (this one included)."""
    text = host.run(["journalctl", "-t", "sshd", "--no-pager", "-o", "cat"]).text
    return text.count("Starting session: command")


def _networks(host) -> list[str]:
    return sorted(host.run(["virsh", "-q", "net-list", "--all", "--name"]).text.split())


def _domains(host) -> list[str]:
    return sorted(host.run(["virsh", "-q", "list", "--all", "--name"]).text.split())


def _assert_unchanged(before: list[str], after: list[str]) -> None:
    assert [line for line in after if line not in before] == []
    assert [line for line in before if line not in after] == []


def _unguested(snapshot: list[str]) -> list[str]:
    """A snapshot without the config space of the GPU the booting guest owns: its kernel is
    enabling the device through vfio-pci, and that is the guest's, not vela's."""
    return [line for line in snapshot if not line.startswith(f"pci {GPUS[0]} driver=")]


@pytest.fixture
def mstconfig_standin(lab):
    """The firmware tool on the host, as the real one would be installed; removed afterwards."""
    host = lab.ssh_host(lab.host(0))
    host.write_file(STANDIN_ON_HOST, STANDIN.read_bytes(), mode=0o755)
    yield
    host.run(["rm", "-rf", STANDIN_ON_HOST, "/var/lib/mstconfig-standin"])


def test_iommu_off_tuning_pool_guests_reboot_guard_and_delete(lab, mstconfig_standin, tmp_path):
    times = {"started": time.monotonic()}
    lab_host = lab.host(0)
    host = lab.ssh_host(lab_host)
    netdev = host.run(["ls", f"/sys/bus/pci/devices/{PF}/net"]).text.strip()
    host.run_script(IOMMU_OFF, timeout=300)
    assert "intel_iommu=off" not in _cmdline(host)  # not before a reboot
    lab.reboot(0)
    assert "intel_iommu=off" in _cmdline(host)
    assert host.run(["ls", "-A", "/sys/kernel/iommu_groups"]).text.strip() == ""
    before, networks = host_snapshot(host), _networks(host)
    pool_spec = SriovPoolArgs.model_validate(_pool_args(lab_host, netdev))
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

        # -- SriovPool: 4 VFs, then 2 ---------------------------------------------------------
        pool, failures = server.check("pool", {}, with_provider(
            SriovPoolProvider(), _pool_args(lab_host, netdev)))
        assert failures == []
        pool_id, pool_outs = server.create("pool", pool)
        _assert_vfs_as_sysfs_says(host, netdev, pool_outs, 4)
        assert "vela-pool" in _networks(host)
        macs = {vf["index"]: vf["mac"] for vf in pool_outs["vfs"]}
        two = {**pool, "numVfs": 2}
        pool_outs = server.update("pool", pool_id, pool_outs, two)
        _assert_vfs_as_sysfs_says(host, netdev, pool_outs, 2)
        assert {vf["index"]: vf["mac"] for vf in pool_outs["vfs"]} == {0: macs[0], 1: macs[1]}
        times["pool create and update"] = time.monotonic()

        # -- two guests at once, one per socket; the first started, the second defined --------
        vf = pool_outs["vfs"][0]
        guests = _create_guests(server, lab_host, host, vf)
        _assert_refused_while_a_guest_holds_a_vf(server, host, pool_id, pool_outs, two, vf)
        times["guests, refusals"] = time.monotonic()

        # -- the reboot guard: a foreign guest refuses the reboot; vela's is stopped and
        # started again ---------------------------------------------------------------------
        # Node 1's page given back: its count on the command line changes, so a reboot.
        changed, failures = server.check("lab-0", {}, _tuning_inputs(
            lab_host, hugepages={"perNode": {"0": 1, "1": 0}}))
        assert failures == []
        tuned = _reboot_with_guests(server, host, tuning_id, again, changed)
        times["reboot guard and reboot"] = time.monotonic()

        # -- the boot that followed: both boot units, in order; the VFs and their MACs back ---
        _assert_units_ran_in_order(host, pool_unit, pool_unit_file)
        assert _vf_macs(host, netdev) == {"0": macs[0], "1": macs[1]}
        facts = gather_facts(host)
        assert {facts.device(gpu["address"]).driver
                for gpu in tuning_outs["gpus"]} == {"vfio-pci"}
        _, tuning_now = server.read("lab-0", tuning_id, tuned)
        assert tuning_now["inSync"], tuning_now["drift"]
        _, pool_now = server.read("pool", pool_id, pool_outs)
        assert pool_now["inSync"], pool_now["drift"]
        _assert_vfs_as_sysfs_says(host, netdev, pool_now, 2)
        sessions = _sessions(host)
        pool_again = server.update("pool", pool_id, pool_now, two)
        assert (_sessions(host) - sessions) == 2
        assert pool_again["changes"] == [] and pool_again["inSync"]

        # -- drift: refresh and diff see a setting changed behind vela's back -----------------
        host.run(["sysctl", "-q", "-w", "vm.swappiness=33"])
        _, drifted = server.read("lab-0", tuning_id, tuning_now)
        assert drifted["inSync"] is False
        assert any("vm.swappiness" in drift for drift in drifted["drift"])
        assert server.diff("lab-0", tuning_id, drifted, changed).changes is True
        times["boot units, reads, drift"] = time.monotonic()

        # -- the guest's boot after the host's: tuned from inside, with a lease ---------------
        _assert_guest_booted_after_the_host(server, host, guests[0])
        times["guest boot"] = time.monotonic()

        # -- delete: guests, the pool, then tuning: the host as it was ------------------------
        for name, (id_, out) in zip(GUESTS, guests, strict=True):
            server.delete(name, id_, out)
        server.delete("pool", pool_id, pool_again)
        server.delete("lab-0", tuning_id, drifted)
    assert "intel_iommu=off" in _cmdline(host)
    _assert_unchanged(before, host_snapshot(host))
    assert _networks(host) == networks
    assert not set(GUESTS) & set(_domains(host))
    assert host.run(["test", "-e", "/var/lib/libvirt/images/vela"], check=False).exit_code == 1
    times["delete"] = time.monotonic()
    steps = list(times.items())
    print("\n" + ", ".join(f"{name} {at - steps[index][1]:.0f} s"
                           for index, (name, at) in enumerate(steps[1:])) +
          f", in all {steps[-1][1] - steps[0][1]:.0f} s")


def _create_guests(server, lab_host, host, vf: dict) -> list[tuple[str, dict]]:
    """Both at once, as the engine creates independent resources; the first started and not
    waited for, the second defined only. Placement, in sync, and two guests that cannot fit."""
    inputs = []
    for index, values in enumerate([{"vfs": [vf], "waitForAddress": False},
                                     {"vfs": [], "start": False}]):
        checked, failures = server.check(GUESTS[index], {},
                                         _guest_inputs(lab_host, index, **values))
        assert failures == []
        inputs.append(checked)
    with ThreadPoolExecutor(max_workers=2) as workers:
        created = list(workers.map(server.create, GUESTS, inputs))
    outs = [out for _, out in created]
    assert [out["state"] for out in outs] == ["running", "shut off"]
    for node, out in enumerate(outs):
        assert out["placement"]["cells"][0]["hostNode"] == node
        assert out["placement"]["cells"][0]["hostCpus"] == [node]
        assert "nvlink" not in out  # no NVSwitches on the lab host
    devices = [{d["kind"]: d for d in out["placement"]["devices"]} for out in outs]
    assert [d["gpu"]["hostAddress"] for d in devices] == GPUS
    assert devices[0]["vf"]["hostAddress"] == vf["address"] and "vf" not in devices[1]
    # The VF's igb is on its own root port, not under the GPU's switch: no GPUDirect
    # locality, and the guest does not pretend otherwise. (None values do not travel: the
    # engine drops nulls from outputs.)
    assert devices[0]["vf"]["gpudirect"] is False and "pairedWith" not in devices[0]["vf"]
    pair, = outs[0]["placement"]["gpuNicPairs"]
    assert pair["nic"] == vf["address"] and pair["gpudirect"] is False

    for (id_, out), checked, state in zip(created, inputs, ["running", "shut off"], strict=True):
        again = server.update("vm", id_, out, checked)
        assert again["changes"] == [] and again["uuid"] == out["uuid"]
        read_id, refreshed = server.read("vm", id_, again)  # what `pulumi refresh` calls
        assert read_id == id_ and refreshed["inSync"] and refreshed["drift"] == []
        assert refreshed["state"] == state

    listed = _domains(host)
    rival = _guest_inputs(lab_host, 0, name="rival", gpus=[GPUS[0]], vfs=[], hostShare=None)
    with pytest.raises(ProviderCallError, match="already assigned to domain 'lab-vm0'"):
        server.create("rival", rival)
    crowded = _guest_inputs(lab_host, 0, name="crowded", gpus=0, vfs=[], hostShare=None,
                            numaNodes=[0])
    with pytest.raises(ProviderCallError, match=r"1 vCPUs on host node 0, which has 0 CPUs "
                                                r"after 0 reserved and those pinned by "
                                                r"domain\(s\) lab-vm0"):
        server.create("crowded", crowded)
    assert _domains(host) == listed
    volumes = host.run(["ls", "/var/lib/libvirt/images/vela"]).text.split()
    assert sorted(volumes) == [f"{name}-seed.iso" for name in GUESTS]
    return created


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


def _vf_macs(host, netdev: str) -> dict[str, str]:
    """VF index -> MAC, as `ip -j link` reports them."""
    link = json.loads(host.run(["ip", "-j", "-d", "link", "show", "dev", netdev]).text)[0]
    return {str(vf["vf"]): vf["address"] for vf in link.get("vfinfo_list", [])}


def _assert_vfs_as_sysfs_says(host, netdev: str, outs: dict, count: int) -> None:
    assert len(outs["vfs"]) == count and outs["pfDevice"]["numVfs"] == count
    assert host.read_file(f"/sys/bus/pci/devices/{PF}/sriov_numvfs").strip() == \
        str(count).encode()
    macs = _vf_macs(host, netdev)
    for vf in outs["vfs"]:
        link = host.run(["readlink", f"/sys/bus/pci/devices/{PF}/virtfn{int(vf['index'])}"]).text
        assert link.strip().endswith(vf["address"])
        assert macs[str(int(vf["index"]))] == vf["mac"]
        assert vf["driver"] == "vfio-pci" and vf["numaNode"] == 0
        assert vf.get("switch") == outs["pfDevice"].get("switch")
        host.run(["test", "-c", vf["vfioDevice"]])


def _assert_refused_while_a_guest_holds_a_vf(server, host, pool_id: str, outs: dict,
                                             inputs: dict, vf: dict) -> None:
    with pytest.raises(ProviderCallError) as refused:
        server.update("pool", pool_id, outs, {**inputs, "numVfs": 3})
    assert f"lab-vm0 ({vf['address']})" in refused.value.message, refused.value.message
    assert "Nothing was changed" in refused.value.message
    assert host.read_file(f"/sys/bus/pci/devices/{PF}/sriov_numvfs").strip() == b"2"


def _reboot_with_guests(server, host, tuning_id: str, outs: dict, inputs: dict) -> dict:
    """A change that needs a reboot: with a guest vela did not make running it is refused,
    nothing changed; without it, vela's running guest is stopped before the reboot (asked to
    shut down, then, since the lab's busybox guest ignores the ACPI power button, powered off
    at its shutdownTimeout), the host reboots, and vela starts it again; the guest that was
    not running stays stopped. The outputs of the update that rebooted."""
    host.run_script(f"cat > /run/tenant.xml << 'EOF'\n{TENANT}\nEOF\n"
                    "virsh -q define /run/tenant.xml && virsh -q start tenant", timeout=120)
    before = _unguested(host_snapshot(host))
    with pytest.raises(ProviderCallError, match=r"a reboot is needed .* but guest\(s\) vela did "
                                                r"not make are running: tenant\. .*Nothing was "
                                                r"changed"):
        server.update("lab-0", tuning_id, outs, inputs)
    assert _unguested(host_snapshot(host)) == before
    host.run_script("virsh -q destroy tenant && virsh -q undefine tenant", timeout=120)
    assert host.run(["virsh", "domstate", GUESTS[1]]).text.split() == ["shut", "off"]

    boot = host.run(["cat", "/proc/sys/kernel/random/boot_id"]).text
    tuned = server.update("lab-0", tuning_id, outs, inputs)
    assert tuned["reboots"] >= 1 and tuned["inSync"], tuned["drift"]
    assert "hugepages=0:1,1:0" in _cmdline(host)
    assert host.run(["cat", "/proc/sys/kernel/random/boot_id"]).text != boot
    assert host.run(["virsh", "domstate", GUESTS[1]]).text.split() == ["shut", "off"]
    assert host.run(["virsh", "domstate", GUESTS[0]]).text.split()[0] == "running"
    # Stopped by vela before the reboot, not by it: libvirt's qemu driver logged the stop
    # (qemuProcessStop) while the old boot was still running.
    log = host.run(["cat", f"/var/log/libvirt/qemu/{GUESTS[0]}.log"]).text
    stops = re.findall(r"^(\S+ \S+?)\.\d+\+0000: shutting down, reason=(\w+)", log, re.M)
    booted = int(re.search(r"^btime (\d+)", host.run(["cat", "/proc/stat"]).text,
                           re.M).group(1))
    assert len(stops) == 1, log[-2000:]
    stopped_at = datetime.strptime(stops[0][0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert stopped_at.timestamp() < booted, (stops, booted)
    return tuned


def _console(host, name: str) -> str:
    return host.run(["cat", f"/var/log/libvirt/qemu/vela-{name}-console.log"], check=False).text


def _assert_guest_booted_after_the_host(server, host, guest: tuple[str, dict]) -> None:
    """The console log starts again with each start of the guest: one boot, younger than the
    host's, tuned by the guest's own boot-time unit; then refresh reads its lease, and it
    answers pings (a ping at a time: busybox ping -c sends only that many)."""
    id_, outs = guest
    deadline = time.monotonic() + GUEST_WAIT
    while "VELA-GUEST-READY" not in _console(host, GUESTS[0]) and time.monotonic() < deadline:
        time.sleep(5)
    console = _console(host, GUESTS[0])
    assert console.count("VELA-GUEST-READY") == 1, console[-3000:]
    _assert_guest_tuned(console, outs)
    ready = re.search(r"VELA-GUEST-READY \S+ \S+ uptime=([\d.]+)", console)
    host_uptime = float(host.run(["cut", "-d", " ", "-f", "1", "/proc/uptime"]).text)
    assert ready and float(ready.group(1)) < host_uptime
    deadline = time.monotonic() + 300
    while not (refreshed := server.read("vm", id_, outs)[1])["addresses"] \
            and time.monotonic() < deadline:
        time.sleep(10)
    assert refreshed["inSync"] and refreshed["state"] == "running", refreshed["drift"]
    assert refreshed["addresses"], "no DHCP lease for the guest"
    host.run_script('for try in $(seq 36); do busybox ping -c 1 -W 5 "$1" && exit 0; '
                    'done; exit 1', [refreshed["addresses"][0]], timeout=240)


def _assert_guest_tuned(boot: str, outs: dict) -> None:
    """One boot of the guest, as its console tells it: devices on its guest NUMA node 0, the
    VF named as NCCL is told, the recipe's settings, the topology file the outputs give."""
    placement = {d["kind"]: d for d in outs["placement"]["devices"]}
    seen = dict(re.findall(r"VELA-GUEST-PCI (\S+) (\S+ numa=\S+)", boot))
    assert seen[placement["gpu"]["guestAddress"]] == "0x1af4:0x1110 numa=0", boot[-3000:]
    assert seen[placement["vf"]["guestAddress"]] == "0x8086:0x10ca numa=0"
    assert "VELA-GUEST-SYSCTL tcp_timestamps=0 rmem_max=4194304" in boot
    # The VF's interface got the recipe's MTU and queue length (the PF is up: SriovPool brings
    # it up, else the VF's mailbox requests go unanswered), under the name the topology file and
    # the NCCL environment use.
    assert f"VELA-GUEST-NETDEV {placement['vf']['guestAddress']} vela0" in boot, boot[-3000:]
    assert "vela-guest-tuning: vela0: txqueuelen 10000" in boot
    assert "vela-guest-tuning: vela0: mtu 9000" in boot
    assert "VELA-GUEST-NET vela0 mtu=9000 txqueuelen=10000" in boot
    assert '<net name="vela0"' in outs["ncclTopology"]
    topology = outs["ncclTopology"].encode()
    assert f"VELA-GUEST-TOPOLOGY bytes={len(topology)} " \
        f"sha256={hashlib.sha256(topology).hexdigest()}" in boot


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
