"""Waiting for a lab host to boot: a kernel panic in this boot ends the wait at once, one from an
earlier boot (the console log spans reboots) does not. No QEMU: the host's "QEMU" is this test
process, and nothing listens on its SSH port."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from lab.hosts import Lab, LabError, LabHost
from lab.machine import HostSpec

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINuJyyVDZDVuPJsPmNDxLfV9SUYoKkPubgVzTCZwM2QM"
PANIC = ("[    0.036000] Kernel panic - not syncing: timer doesn't work through "
         "Interrupt-remapped IO-APIC\n")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def host(tmp_path) -> LabHost:
    directory = tmp_path / "hosts" / "lab-0"
    directory.mkdir(parents=True)
    (directory / "qemu.pid").write_text(f"{os.getpid()}\n")
    return LabHost(HostSpec(index=0, directory=directory, ssh_port=_closed_port()), HOST_KEY)


def test_a_panic_in_this_boot_ends_the_wait(tmp_path, host):
    console = host.spec.path("console.log")
    console.write_text("[    0.000000] Linux version 6.1.0\n")
    writer = threading.Timer(1.0, lambda: console.open("a").write(PANIC))
    writer.start()
    try:
        with pytest.raises(LabError, match="kernel panicked while booting") as raised:
            Lab(tmp_path).wait_for_ssh(host, deadline=60.0, log=lambda _: None)
    finally:
        writer.cancel()
    assert "Interrupt-remapped IO-APIC" in str(raised.value)  # the console tail comes with it


def test_a_panic_in_an_earlier_boot_does_not(tmp_path, host):
    host.spec.path("console.log").write_text(PANIC + "[    0.000000] Linux version 6.1.0\n")
    with pytest.raises(LabError, match="no SSH within 3 s"):
        Lab(tmp_path).wait_for_ssh(host, deadline=3.0, not_boot_id="before",
                                   log=lambda _: None)
