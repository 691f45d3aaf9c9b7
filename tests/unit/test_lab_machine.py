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
    devices = _devices(argv)
    assert "intel-iommu,intremap=on,caching-mode=on,device-iotlb=on" in devices
    assert any(arg.startswith("q35,accel=tcg,kernel-irqchip=split") for arg in argv)
    for node in (0, 1):
        assert f"pxb-pcie,id=pxb{node},bus_nr={0x40 * (node + 1)},numa_node={node},bus=pcie.0" \
            in devices
        assert f"x3130-upstream,id=sw{node},bus=rp{node}" in devices
        assert f"ivshmem-plain,id=gpu{node},memdev=gpumem{node},bus=sw{node}-gpu" in devices
        assert f"igb,id=nic{node},netdev=sriov{node},bus=sw{node}-nic" in devices
        assert any(arg.startswith(f"node,nodeid={node},cpus={node},memdev=mem{node}")
                   for arg in argv)
    assert "user,id=mgmt,hostfwd=tcp:127.0.0.1:40022-:22" in argv
    assert "-no-reboot" not in argv  # a reboot from inside must reset in the same process
    assert any("name=opt/vela/ssh_host_ed25519_key," in arg for arg in argv)


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
