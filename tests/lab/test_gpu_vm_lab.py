"""GpuVm on a lab host, through the dynamic-provider gRPC server: two guests created at the same
moment, one per socket (hostShare), each placed with its socket's GPU stand-in, a VF of its
socket's igb and its socket's CPU (the host's placement lock makes one define after the other,
with what the first took in view). The first is started: it boots, takes a DHCP lease, answers
pings and sees both devices on its NUMA node 0; its VF carries the name the NCCL topology file
and environment give it, and the topology file is where NCCL reads it. The second is only
defined (`start: false`): its placement is the domain's and the outputs', the same code path
whatever the socket. Applying again changes nothing and refresh reads both in sync; a third
guest wanting a held GPU and one wanting a CPU both guests' vCPUs hold fail clearly, leaving
nothing behind. Then the host needs a reboot (HostTuning): refused, with nothing changed, while
a guest vela did not make runs; without it, the running guest is stopped by vela, the host
reboots, and it comes back, booted after the host, with its tuning and topology file, its new
boot checked as the first; the guest that was not running stays stopped (vela starts again only
what it stopped). Delete removes the domains and their volumes.

One nested guest boots at a time: under TCG inside a TCG host, one boots in 7-10 min, two
together took 13-16 min, and a lab host with two guests booting stopped answering here (its
timer no longer fired, as RCU's stall reports on its console said); CI's last run was still in
this test when its 90 min ran out. (A `virsh reset` round, a guest's own reboot under
on_reboot=restart, was dropped for CI's time too: the lab guest's init runs the tuning at every
boot either way.)

The host is prepared as HostTuning and SriovPool would leave it (1 GiB pages reserved at boot and
served by /dev/hugepages, the VFs bound to vfio-pci), plus libvirt's default NAT network started.
The VFs come from the igbs on their own root ports: QEMU's switch ports have no ACS, so VFs under
the switch share their PF's IOMMU group and could not be passed through alone.
"""

from __future__ import annotations

import hashlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import yaml

from components.runner import PROJECT_ROOT
from providers.gpu_vm.provider import GpuVmProvider
from providers.host_tuning.provider import HostTuningProvider
from providers.sriov_pool.provider import SriovPoolProvider
from tests.lab.conftest import booted_lab, host_snapshot
from tests.support.provider_harness import ProviderCallError, ProviderServer, with_provider

pytestmark = pytest.mark.slow
# How long a nested guest may take to boot (TCG inside a TCG host), to an address or a READY.
GUEST_WAIT = 1200
# The lab's minimal guest as the dev stack boots it (kernel, initramfs, command line).
LAB_GUEST_BOOT = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text()
                                )["config"]["vela:kernelBoot"]
# Per host NUMA node: the GPU stand-in and the igb on its own root port.
GPUS = ["0000:43:00.0", "0000:83:00.0"]
ISOLATED_PFS = ["0000:45:00.0", "0000:85:00.0"]
# Boot-time 1 GiB pages, as HostTuning's hugepages setting configures them: at run time the
# kernel rarely finds a free, aligned gigabyte on node 0. default_hugepagesz=1G makes systemd's
# /dev/hugepages serve them, which libvirt uses. The lab image boots with nokaslr, so the kernel
# image does not take node 0's aligned gigabyte (its page would come from node 1: free 0 and 2).
PREPARE = r'''
set -e
sed -i 's/^GRUB_CMDLINE_LINUX="/&default_hugepagesz=1G hugepagesz=1G hugepages=0:1,1:1 /' \
  /etc/default/grub
update-grub > /dev/null 2>&1
'''
AFTER_REBOOT = r'''
set -e
virsh -q net-start default > /dev/null 2>&1 || :
cat /sys/devices/system/node/node*/hugepages/hugepages-1048576kB/free_hugepages
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(tmp_path_factory) as lab:
        lab.ssh_host(lab.host(0)).run_script(PREPARE, timeout=300)
        lab.reboot(0)
        free = lab.ssh_host(lab.host(0)).run_script(AFTER_REBOOT, timeout=120).text.split()
        assert free == ["1", "1"], f"1 GiB pages free per node after boot: {free}"
        yield lab


def _base(lab_host) -> dict:
    return {"address": "127.0.0.1", "port": lab_host.spec.ssh_port, "user": "root",
            "hostKey": lab_host.host_key}


def _console(host, name: str) -> str:
    return host.run(["cat", f"/var/log/libvirt/qemu/vela-{name}-console.log"], check=False).text


def _guest_boots(host, name: str, boots: int) -> list[str]:
    """The console of each of the guest's boots so far, once `boots` of them are ready. The
    deadline is the guests' waitTimeout: two nested TCG guests booting at once took 770 s to
    their first address on a loaded 2-core machine."""
    deadline = time.monotonic() + GUEST_WAIT
    while _console(host, name).count("VELA-GUEST-READY") < boots \
            and time.monotonic() < deadline:
        time.sleep(5)
    console = _console(host, name)
    assert console.count("VELA-GUEST-READY") >= boots, console[-3000:]
    parts = console.split("VELA-GUEST-READY")
    return parts[:boots]


def _assert_tuned(boot: str, outs: dict, node: int) -> None:
    """One boot of a guest, as its console tells it: devices on its guest NUMA node 0, the VF
    named as NCCL is told, the recipe's settings, the topology file the outputs give."""
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
    assert placement["gpu"]["hostAddress"] == GPUS[node]


def test_two_nested_guests_one_per_socket_survive_a_reboot(lab, tmp_path):
    lab_host = lab.host(0)
    host = lab.ssh_host(lab_host)
    config = {"vela:sshPrivateKey": lab.key_path.read_text()}
    with ProviderServer(config=config, log=tmp_path / "provider.log") as server:
        pools = []
        for pf in ISOLATED_PFS:
            pool_inputs = with_provider(SriovPoolProvider(), {**_base(lab_host), "pf": pf,
                                                              "numVfs": 1})
            pools.append(server.create(f"pool-{pf}",
                                       server.check("pool", {}, pool_inputs)[0]))
        vfs = [vf for _, pool in pools for vf in pool["vfs"]]
        assert [vf["numaNode"] for vf in vfs] == [0, 1]

        base = {**_base(lab_host), "vcpus": 1, "memoryGib": 1, "gpus": 1,
                "gpuSelector": ["1af4:1110"], "vfs": vfs, "reservedCpus": 0,
                "kernelBoot": LAB_GUEST_BOOT,
                "domainType": "qemu", "cpuModel": "qemu64", "waitTimeout": GUEST_WAIT,
                "shutdownTimeout": 20}  # the lab's busybox guest ignores ACPI shutdown
        names = ["lab-vm0", "lab-vm1"]
        inputs = []
        for index, name in enumerate(names):
            checked, failures = server.check(name, {}, with_provider(GpuVmProvider(), {
                **base, "name": name, "hostShare": {"index": index, "count": 2}}))
            assert failures == []
            inputs.append(checked)
        inputs[1] = {**inputs[1], "start": False}  # defined, placed, not booted
        # Both at once, as the engine creates independent resources: the host's placement
        # lock makes one define after the other, with what the first took in view.
        with ThreadPoolExecutor(max_workers=2) as workers:
            created = list(workers.map(server.create, names, inputs))
        outs = [out for _, out in created]
        assert not outs[1].get("addresses") and outs[1]["state"] == "shut off"
        for node, out in enumerate(outs):
            assert out["placement"]["cells"][0]["hostNode"] == node
            assert out["placement"]["cells"][0]["hostCpus"] == [node]
            devices = {d["kind"]: d for d in out["placement"]["devices"]}
            assert devices["vf"]["hostAddress"] == vfs[node]["address"]
            # The VF's igb is on its own root port, not under the GPU's switch: no GPUDirect
            # locality, and the guest does not pretend otherwise.
            # (None values do not travel: the engine drops nulls from outputs)
            assert devices["vf"]["gpudirect"] is False and "pairedWith" not in devices["vf"]
            pair, = out["placement"]["gpuNicPairs"]
            assert pair["nic"] == vfs[node]["address"] and pair["gpudirect"] is False
            assert "nvlink" not in out  # no NVSwitches on the lab host
        # An answer within 3 min, a ping at a time: a nested TCG guest that just took its
        # lease may still be busy booting on a loaded machine (busybox ping -c sends only
        # that many, whatever comes back).
        host.run_script('for try in $(seq 36); do busybox ping -c 1 -W 5 "$1" && exit 0; '
                        'done; exit 1', [outs[0]["addresses"][0]], timeout=240)
        first, = _guest_boots(host, names[0], 1)
        _assert_tuned(first, outs[0], 0)
        pf_netdev = host.run(["ls", f"/sys/bus/pci/devices/{ISOLATED_PFS[0]}/net"]).text.strip()
        pf_link = host.run(["ip", "-j", "-d", "link", "show", "dev", pf_netdev]).text
        assert vfs[0]["mac"] in pf_link

        listed = host.run(["virsh", "-q", "list", "--all", "--name"]).text
        for (id_, out), checked, state in zip(created, inputs, ["running", "shut off"],
                                              strict=True):
            again = server.update("vm", id_, out, checked)
            assert again["changes"] == [] and again["uuid"] == out["uuid"]
            read_id, refreshed = server.read("vm", id_, again)  # what `pulumi refresh` calls
            assert read_id == id_ and refreshed["inSync"] and refreshed["drift"] == []
            assert refreshed["state"] == state

        rival = with_provider(GpuVmProvider(), {**base, "name": "rival", "gpus": [GPUS[0]],
                                                 "vfs": []})
        with pytest.raises(ProviderCallError, match="already assigned to domain 'lab-vm0'"):
            server.create("rival", rival)
        crowded = with_provider(GpuVmProvider(), {**base, "name": "crowded", "gpus": 0,
                                                   "vfs": [], "numaNodes": [0]})
        with pytest.raises(ProviderCallError, match=r"1 vCPUs on host node 0, which has 0 CPUs "
                                                    r"after 0 reserved and those pinned by "
                                                    r"domain\(s\) lab-vm0"):
            server.create("crowded", crowded)
        assert host.run(["virsh", "-q", "list", "--all", "--name"]).text == listed
        volumes = host.run(["ls", "/var/lib/libvirt/images/vela"]).text.split()
        assert sorted(volumes) == [f"{name}-seed.iso" for name in names]

        _reboot_with_guests(server, lab_host, host, names, outs)

        for (id_, out), name in zip(created, names, strict=True):
            server.delete(name, id_, out)
        for (pool_id, pool), pf in zip(pools, ISOLATED_PFS, strict=True):
            server.delete(f"pool-{pf}", pool_id, pool)
    listed = host.run(["virsh", "-q", "list", "--all", "--name"]).text
    assert not set(names) & set(listed.split())
    assert host.run(["test", "-e", "/var/lib/libvirt/images/vela"], check=False).exit_code == 1


# A guest vela did not make: the lab's minimal kernel and initramfs, no devices.
TENANT = """<domain type='qemu'><name>tenant</name><memory unit='MiB'>160</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type>
<kernel>/usr/local/share/vela-guest/vmlinux</kernel>
<initrd>/usr/local/share/vela-guest/initrd.cpio</initrd><cmdline>console=ttyS0</cmdline></os>
<devices><memballoon model='none'/></devices></domain>"""


def _reboot_with_guests(server, lab_host, host, names: list[str], outs: list[dict]) -> None:
    """HostTuning needs a reboot (vfio-pci.ids and the IOMMU on the command line): with a guest
    vela did not make running it refuses, changing nothing; without it, vela's running guest is
    stopped before the reboot (asked to shut down, then, since the lab's busybox guest ignores
    the ACPI power button, powered off at its shutdownTimeout), the host reboots, and it runs
    again, booted after the host, with its tuning and topology file. The other guest, not
    running before, stays stopped."""
    tuning = with_provider(HostTuningProvider(), {
        **_base(lab_host), "mode": "vm", "reboot": "allowed", "gpuSelector": ["1af4:1110"],
        "nicSelector": ["8086:10c9"], "acs": False, "maxReadRequest": False,
        "firmware": {"enabled": False}, "hugepages": {"perNode": {"0": 1, "1": 1}}})
    inputs, failures = server.check("tuning", {}, tuning)
    assert failures == []
    host.run_script(f"cat > /run/tenant.xml << 'EOF'\n{TENANT}\nEOF\n"
                    "virsh -q define /run/tenant.xml && virsh -q start tenant", timeout=120)
    before = host_snapshot(host)
    with pytest.raises(ProviderCallError, match=r"a reboot is needed .* but guest\(s\) vela did "
                                                r"not make are running: tenant\. .*Nothing was "
                                                r"changed"):
        server.create("tuning", inputs)
    assert host_snapshot(host) == before
    host.run_script("virsh -q destroy tenant && virsh -q undefine tenant", timeout=120)
    assert host.run(["virsh", "domstate", names[1]]).text.split() == ["shut", "off"]

    boot = host.run(["cat", "/proc/sys/kernel/random/boot_id"]).text
    _, tuned = server.create("tuning", inputs)
    assert tuned["reboots"] >= 1
    assert host.run(["cat", "/proc/sys/kernel/random/boot_id"]).text != boot
    assert host.run(["virsh", "domstate", names[1]]).text.split() == ["shut", "off"]
    for node, (name, out) in enumerate(zip(names[:1], outs[:1], strict=True)):
        assert host.run(["virsh", "domstate", name]).text.split()[0] == "running"
        # Stopped by vela before the reboot, not by it: libvirt's qemu driver logged the stop
        # (qemuProcessStop) while the old boot was still running.
        log = host.run(["cat", f"/var/log/libvirt/qemu/{name}.log"]).text
        stops = re.findall(r"^(\S+ \S+?)\.\d+\+0000: shutting down, reason=(\w+)", log, re.M)
        booted = int(re.search(r"^btime (\d+)", host.run(["cat", "/proc/stat"]).text,
                               re.M).group(1))
        assert len(stops) == 1, log[-2000:]
        stopped_at = datetime.strptime(stops[0][0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        assert stopped_at.timestamp() < booted, (stops, booted)
        # The console log starts again with the guest: one boot, younger than the host's.
        first, = _guest_boots(host, name, 1)
        _assert_tuned(first, out, node)
        ready = re.search(r"VELA-GUEST-READY \S+ \S+ uptime=([\d.]+)", _console(host, name))
        host_uptime = float(host.run(["cut", "-d", " ", "-f", "1", "/proc/uptime"]).text)
        assert ready and float(ready.group(1)) < host_uptime

