"""The lab's QEMU command line and apt mirror derivation (pure; no QEMU started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.apt_sources import (
    backports_source,
    debian_sources,
    parse_deb822,
    parse_one_line,
)
from lab.machine import HostSpec, qemu_argv


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]


def test_machine_shape():
    argv = qemu_argv(HostSpec(index=3, directory=Path("/lab/hosts/lab-3"), ssh_port=40022))
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg,kernel-irqchip=split"
    assert argv[argv.index("-cpu") + 1] == "max,vendor=GenuineIntel"
    assert argv[argv.index("-smp") + 1] == "2,sockets=2,cores=1,threads=1"
    assert argv[argv.index("-m") + 1] == "8192M"  # 2 nodes of 4 GiB
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "-numa"] == [
        "node,nodeid=0,cpus=0,memdev=mem0", "node,nodeid=1,cpus=1,memdev=mem1"]
    # The expanders' bus numbers, as machine.py explains them: node 0's root bus is 0x40 = 64,
    # node 1's 0x80 = 128 (QEMU takes bus_nr in decimal). Node 0's isolated NIC then sits at
    # 0000:45:00.0, the port tests/lab/test_lab_host.py sees the dev stack pool
    # (lab-0-pci-0000-45-00-0). Chassis numbers: 10-13 on node 0, 14-17 on node 1.
    assert _devices(argv) == [
        "intel-iommu,intremap=on,caching-mode=on,device-iotlb=on",
        "pcie-root-port,id=rp-disk,bus=pcie.0,chassis=1,slot=1",
        "virtio-blk-pci,drive=disk0,bus=rp-disk",
        "pcie-root-port,id=rp-mgmt,bus=pcie.0,chassis=2,slot=2",
        "virtio-net-pci,netdev=mgmt,bus=rp-mgmt",
        "pxb-pcie,id=pxb0,bus_nr=64,numa_node=0,bus=pcie.0",
        "pcie-root-port,id=rp0,bus=pxb0,chassis=10,slot=0",
        "x3130-upstream,id=sw0,bus=rp0",
        "xio3130-downstream,id=sw0-gpu,bus=sw0,chassis=11,slot=0",
        "xio3130-downstream,id=sw0-nic,bus=sw0,chassis=12,slot=0",
        "ivshmem-plain,id=gpu0,memdev=gpumem0,bus=sw0-gpu",
        "igb,id=nic0,netdev=sriov0,bus=sw0-nic,mac=52:54:00:76:03:00",
        "pcie-root-port,id=rp0-nic,bus=pxb0,chassis=13,slot=0",
        "igb,id=nic0-iso,netdev=sriov0-iso,bus=rp0-nic,mac=52:54:00:76:03:01",
        "pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0",
        "pcie-root-port,id=rp1,bus=pxb1,chassis=14,slot=0",
        "x3130-upstream,id=sw1,bus=rp1",
        "xio3130-downstream,id=sw1-gpu,bus=sw1,chassis=15,slot=0",
        "xio3130-downstream,id=sw1-nic,bus=sw1,chassis=16,slot=0",
        "ivshmem-plain,id=gpu1,memdev=gpumem1,bus=sw1-gpu",
        "igb,id=nic1,netdev=sriov1,bus=sw1-nic,mac=52:54:00:76:03:02",
        "pcie-root-port,id=rp1-nic,bus=pxb1,chassis=17,slot=0",
        "igb,id=nic1-iso,netdev=sriov1-iso,bus=rp1-nic,mac=52:54:00:76:03:03",
    ]
    objects = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-object"]
    assert objects == ["memory-backend-ram,id=mem0,size=4096M",
                       "memory-backend-ram,id=mem1,size=4096M",
                       "memory-backend-memfd,id=gpumem0,size=1024M,share=on",
                       "memory-backend-memfd,id=gpumem1,size=1024M,share=on"]
    assert "user,id=mgmt,hostfwd=tcp:127.0.0.1:40022-:22" in argv
    assert "-no-reboot" not in argv  # a reboot from inside must reset in the same process
    assert "name=opt/vela/ssh_host_ed25519_key,file=/lab/hosts/lab-3/seed/ssh_host_ed25519_key" \
        in argv


def _netdevs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-netdev"]


def test_the_isolated_nics_of_every_host_share_one_fabric_chain():
    first = qemu_argv(HostSpec(index=0, directory=Path("/l/0"), ssh_port=1, fabric_port=5000))
    second = qemu_argv(HostSpec(index=1, directory=Path("/l/1"), ssh_port=2, fabric_port=5001,
                                fabric_uplink=5000))
    stream = "stream,id={},server={},addr.type=inet,addr.host=127.0.0.1,addr.port={}"
    hub = [f"hubport,id=sriov{node}-iso,hubid=0" for node in (0, 1)]
    down = [stream.format("fabric-down", "on", 5000),
            "hubport,id=fabric-down-port,hubid=0,netdev=fabric-down"]
    assert [n for n in _netdevs(first) if "iso" in n or "fabric" in n] == hub + down
    # Every NIC of every host has a MAC of its own on the shared fabric.
    macs = [d.rsplit("mac=", 1)[1] for h in (first, second) for d in _devices(h) if "mac=" in d]
    assert len(set(macs)) == len(macs) == 8
    # The NICs under the switches stay on closed user networks of their own.
    assert "user,id=sriov0,restrict=on" in _netdevs(first)
    assert [n for n in _netdevs(second) if "fabric" in n] == [
        stream.format("fabric-down", "on", 5001),
        "hubport,id=fabric-down-port,hubid=0,netdev=fabric-down",
        stream.format("fabric-up", "off", 5000),
        "hubport,id=fabric-up-port,hubid=0,netdev=fabric-up"]


def test_a_host_without_a_fabric_port_keeps_closed_networks():
    argv = qemu_argv(HostSpec(index=0, directory=Path("/l/0"), ssh_port=1))
    assert "user,id=sriov0-iso,restrict=on" in _netdevs(argv)
    assert not [n for n in _netdevs(argv) if "fabric" in n or "hubport" in n]


def test_kvm_uses_the_host_cpu():
    argv = qemu_argv(HostSpec(index=0, directory=Path("/x"), ssh_port=1, accel="kvm"))
    assert argv[argv.index("-cpu") + 1] == "host"


DEB822 = """Types: deb
# a comment
URIs: http://apt.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://apt.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://apt.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_sources_in_both_formats():
    sources = parse_deb822(DEB822)
    assert [(s.uri, s.suites) for s in sources] == [
        ("http://apt.example/debian", ("bookworm", "bookworm-updates")),
        ("http://apt.example/debian-security", ("bookworm-security",))]
    line, = parse_one_line("deb [arch=amd64 signed-by=/k.gpg] http://apt.example/debian "
                           "bookworm main # note\n# deb http://x bookworm main\n")
    assert (line.uri, line.suites, line.components, line.signed_by) == \
        ("http://apt.example/debian", ("bookworm",), ("main",), "/k.gpg")


def test_mirrors_come_from_the_machine(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(DEB822)
    assert {s.uri for s in debian_sources("bookworm", tmp_path)} == {
        "http://apt.example/debian", "http://apt.example/debian-security"}
    backports = backports_source("bookworm", tmp_path)
    assert backports.uri == "http://apt.example/debian"
    assert "Suites: bookworm-backports" in backports.deb822()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="no Debian 'bookworm' entry"):
        debian_sources("bookworm", empty)


def test_each_new_host_links_its_fabric_to_the_one_before_and_keeps_it(tmp_path):
    from lab.hosts import Lab
    from lab.image import Image

    image = Image(tmp_path / "image", "test")
    image.directory.mkdir()
    image.disk.write_bytes(b"\0" * 65536)
    lab = Lab(tmp_path / "lab")
    lab._client_key()
    first, second = lab._host(0, image, "tcg"), lab._host(1, image, "tcg")
    assert first.spec.fabric_port and not first.spec.fabric_uplink
    assert second.spec.fabric_uplink == first.spec.fabric_port != second.spec.fabric_port
    # Read back from host.json, as a later command sees them.
    assert [host.spec for host in Lab(tmp_path / "lab").hosts()] == [first.spec, second.spec]
    assert lab._host(1, image, "tcg").spec == second.spec
