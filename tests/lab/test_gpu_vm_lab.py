"""GpuVm on a lab host, through the dynamic-provider gRPC server: a nested guest with the GPU
stand-in and an igb VF passed through boots, takes a DHCP lease, answers pings and sees both
devices on its NUMA node 0; applying again changes nothing and refresh reads it in sync; a
second guest wanting the same GPU and a guest wanting more huge pages than the host has fail
clearly, leaving nothing behind; delete removes the domain and its volumes.

The host is prepared as HostTuning and SriovPool would leave it (1 GiB pages reserved at boot and
served by /dev/hugepages, the VF bound to vfio-pci), plus libvirt's default NAT network started.
The VF comes from the igb on its own root port: QEMU's switch ports have no ACS, so VFs under the
switch share their PF's IOMMU group and could not be passed through alone.
"""

from __future__ import annotations

import hashlib
import re
import time

import pytest

from providers.gpu_vm.provider import GpuVmProvider
from providers.sriov_pool.provider import SriovPoolProvider
from tests.lab.conftest import booted_lab
from tests.support.provider_harness import ProviderCallError, ProviderServer, with_provider

pytestmark = pytest.mark.slow
GPU = "0000:43:00.0"  # the GPU stand-in on node 0
ISOLATED_PF = "0000:45:00.0"  # the igb on its own root port, node 0
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


def test_nested_guest_with_gpu_and_vf(lab, tmp_path):
    lab_host = lab.host(0)
    host = lab.ssh_host(lab_host)
    config = {"vela:sshPrivateKey": lab.key_path.read_text()}
    with ProviderServer(config=config, log=tmp_path / "provider.log") as server:
        pool_inputs = with_provider(SriovPoolProvider(), {
            **_base(lab_host), "pf": ISOLATED_PF, "numVfs": 1})
        pool_id, pool = server.create("pool", server.check("pool", {}, pool_inputs)[0])
        vf, = pool["vfs"]

        vm = {**_base(lab_host), "name": "lab-vm", "vcpus": 1, "memoryGib": 1, "gpus": 1,
              "gpuSelector": ["1af4:1110"], "vfs": [vf], "reservedCpus": 0,
              "kernelBoot": {"kernel": "/usr/local/share/vela-guest/vmlinuz",
                             "initrd": "/usr/local/share/vela-guest/initrd.img",
                             "cmdline": "console=ttyS0 no_timer_check"},
              "domainType": "qemu", "cpuModel": "qemu64", "waitTimeout": 1200,
              "shutdownTimeout": 20}  # the lab's busybox guest ignores ACPI shutdown
        inputs, failures = server.check("vm", {}, with_provider(GpuVmProvider(), vm))
        assert failures == []
        id_, outs = server.create("vm", inputs)
        address, = outs["addresses"]
        placement = {d["kind"]: d for d in outs["placement"]["devices"]}
        assert placement["gpu"]["hostAddress"] == GPU
        assert placement["vf"]["pairedWith"] == GPU  # same NUMA node: under the GPU's switch
        assert 'busid="' + placement["gpu"]["guestAddress"] in outs["ncclTopology"]

        host.run(["busybox", "ping", "-c", "3", "-W", "5", address], timeout=60)
        deadline = time.monotonic() + 300
        while "VELA-GUEST-READY" not in _console(host, "lab-vm") and time.monotonic() < deadline:
            time.sleep(5)
        console = _console(host, "lab-vm")
        assert "VELA-GUEST-READY" in console, console[-3000:]
        seen = dict(re.findall(r"VELA-GUEST-PCI (\S+) (\S+ numa=\S+)", console))
        assert seen[placement["gpu"]["guestAddress"]] == "0x1af4:0x1110 numa=0"
        assert seen[placement["vf"]["guestAddress"]] == "0x8086:0x10ca numa=0"
        assert "VELA-GUEST-SYSCTL tcp_timestamps=0 rmem_max=4194304" in console
        # The VF's interface got the recipe's MTU and queue length (the PF is up: SriovPool
        # brings it up, else the VF's mailbox requests go unanswered); the PF holds its MAC.
        # The VF's interface is named as the topology file and the NCCL environment name it.
        assert f"VELA-GUEST-NETDEV {placement['vf']['guestAddress']} vela0" in console, \
            console[-3000:]
        assert "vela-guest-tuning: vela0: txqueuelen 10000" in console
        assert "vela-guest-tuning: vela0: mtu 9000" in console
        assert "VELA-GUEST-NET vela0 mtu=9000 txqueuelen=10000" in console
        assert '<net name="vela0"' in outs["ncclTopology"]
        # The topology file is where NCCL reads it by default, as the outputs give it.
        topology = outs["ncclTopology"].encode()
        assert f"VELA-GUEST-TOPOLOGY bytes={len(topology)} " \
            f"sha256={hashlib.sha256(topology).hexdigest()}" in console
        pf_netdev = host.run(["ls", f"/sys/bus/pci/devices/{ISOLATED_PF}/net"]).text.strip()
        pf_link = host.run(["ip", "-j", "-d", "link", "show", "dev", pf_netdev]).text
        assert vf["mac"] in pf_link

        listed = host.run(["virsh", "-q", "list", "--all", "--name"]).text
        again = server.update("vm", id_, outs, inputs)
        assert again["changes"] == [] and again["uuid"] == outs["uuid"]
        read_id, refreshed = server.read("vm", id_, again)  # what `pulumi refresh` calls
        assert read_id == id_ and refreshed["inSync"] and refreshed["drift"] == []
        assert refreshed["state"] == "running" and refreshed["addresses"] == [address]

        rival = with_provider(GpuVmProvider(), {**vm, "name": "rival", "gpus": [GPU],
                                                 "vfs": []})
        with pytest.raises(ProviderCallError, match="already assigned to domain 'lab-vm'"):
            server.create("rival", rival)
        greedy = with_provider(GpuVmProvider(), {**vm, "name": "greedy", "gpus": 0, "vfs": [],
                                                  "memoryGib": 2})
        with pytest.raises(ProviderCallError, match=r"node 0 has 0 free 1 GiB huge page\(s\); "
                                                    r"guest cell 0 needs 2"):
            server.create("greedy", greedy)
        assert host.run(["virsh", "-q", "list", "--all", "--name"]).text == listed
        volumes = host.run(["ls", "/var/lib/libvirt/images/vela"]).text.split()
        assert sorted(volumes) == ["lab-vm-seed.iso"]

        server.delete("vm", id_, again)
        server.delete("pool", pool_id, pool)
    assert "lab-vm" not in host.run(["virsh", "-q", "list", "--all", "--name"]).text
    assert host.run(["test", "-e", "/var/lib/libvirt/images/vela"], check=False).exit_code == 1
