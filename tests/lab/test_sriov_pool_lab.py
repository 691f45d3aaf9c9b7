"""SriovPool on a lab host's igb PF, through the dynamic-provider gRPC server.

create 4 VFs bound to vfio-pci (outputs match sysfs and `ip link`) -> change to 2 -> a change
while a libvirt domain uses a VF is refused and the domain is untouched -> reboot: the VFs come
back with the same MACs -> apply again: no change, one read -> delete: the PF as it was.
"""

from __future__ import annotations

import json

import pytest

from providers.sriov_pool.provider import SriovPoolProvider
from tests.support.provider_harness import (
    ProviderCallError,
    ProviderServer,
    with_provider,
)

pytestmark = pytest.mark.slow
PF, PF_NETDEV = "0000:44:00.0", "enp68s0"
DOMAIN = """<domain type='qemu'><name>holds-a-vf</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<hostdev mode='subsystem' type='pci' managed='yes'><source>
<address domain='0x0000' bus='0x44' slot='0x10' function='0x0'/></source></hostdev>
</devices></domain>"""
SNAPSHOT = r'''
dev=/sys/bus/pci/devices/''' + PF + r'''
echo "numvfs $(cat $dev/sriov_numvfs) autoprobe $(cat $dev/sriov_drivers_autoprobe)"
echo "driver $(readlink $dev/driver | sed 's|.*/||')"
ip -d link show dev ''' + PF_NETDEV + r''' | grep -E '^ *vf ' || true
find /etc/systemd/system /usr/local/sbin /var/lib/vela -mindepth 1 2>/dev/null | sort
virsh -q net-list --all --name | sort
virsh -q list --all --name | sort
'''


def _vf_lines(host) -> dict[str, str]:
    """VF index -> MAC, as `ip -j link` reports them."""
    link = json.loads(host.run(["ip", "-j", "-d", "link", "show", "dev", PF_NETDEV]).text)[0]
    return {str(vf["vf"]): vf["address"] for vf in link.get("vfinfo_list", [])}


def _sessions(host) -> int:
    text = host.run(["journalctl", "-t", "sshd", "--no-pager", "-o", "cat"]).text
    return text.count("Starting session: command")


def _matches_sysfs(host, outs, count):
    assert len(outs["vfs"]) == count and outs["pfDevice"]["numVfs"] == count
    macs = _vf_lines(host)
    for vf in outs["vfs"]:
        link = host.run(["readlink", f"/sys/bus/pci/devices/{PF}/virtfn{int(vf['index'])}"]).text
        assert link.strip().endswith(vf["address"])
        assert macs[str(int(vf["index"]))] == vf["mac"]
        assert vf["driver"] == "vfio-pci" and vf["numaNode"] == 0
        assert vf["switch"] == outs["pfDevice"]["switch"] is not None
        host.run(["test", "-c", vf["vfioDevice"]])


def test_pool_lifecycle(lab, tmp_path):
    lab_host = lab.host(0)
    host = lab.ssh_host(lab_host)
    before = host.run_script(SNAPSHOT).text
    base = {"address": "127.0.0.1", "port": lab_host.spec.ssh_port, "user": "root",
            "hostKey": lab_host.host_key, "pf": PF_NETDEV, "numVfs": 4,
            "cluster": "lab", "node": "lab-0", "network": {"name": "vela-pool"},
            "nicInventory": [{"address": PF, "interfaces": [PF_NETDEV], "sriovTotalVfs": 7}],
            "releaseTimeout": 10}  # the guest holding a VF below stays: refuse soon
    with ProviderServer(config={"vela:sshPrivateKey": lab.key_path.read_text()},
                        log=tmp_path / "provider.log") as server:
        inputs, failures = server.check("pool", {}, with_provider(SriovPoolProvider(), base))
        assert failures == []
        id_, outs = server.create("pool", inputs)
        _matches_sysfs(host, outs, 4)
        assert "vela-pool" in host.run(["virsh", "-q", "net-list", "--name"]).text
        macs = {vf["index"]: vf["mac"] for vf in outs["vfs"]}

        two = {**inputs, "numVfs": 2}
        outs = server.update("pool", id_, outs, two)
        _matches_sysfs(host, outs, 2)
        assert {vf["index"]: vf["mac"] for vf in outs["vfs"]} == {0: macs[0], 1: macs[1]}

        host.write_file("/run/holds-a-vf.xml", DOMAIN.encode())
        host.run(["virsh", "define", "/run/holds-a-vf.xml"])
        with pytest.raises(ProviderCallError) as refused:
            server.update("pool", id_, outs, {**two, "numVfs": 3})
        assert "holds-a-vf (0000:44:10.0)" in refused.value.message
        assert "Nothing was changed" in refused.value.message
        assert host.read_file(f"/sys/bus/pci/devices/{PF}/sriov_numvfs").strip() == b"2"
        assert "holds-a-vf" in host.run(["virsh", "-q", "list", "--all", "--name"]).text
        host.run(["virsh", "undefine", "holds-a-vf"])

        lab.reboot(0)
        assert _vf_lines(host) == {"0": macs[0], "1": macs[1]}
        _, refreshed = server.read("pool", id_, outs)
        assert refreshed["inSync"], refreshed["drift"]
        _matches_sysfs(host, refreshed, 2)

        sessions = _sessions(host)
        again = server.update("pool", id_, refreshed, two)
        counted = _sessions(host) - sessions
        assert again["changes"] == [] and again["inSync"]
        assert counted == 2  # the update's one read, and this count

        server.delete("pool", id_, again)
    assert host.run_script(SNAPSHOT).text == before
