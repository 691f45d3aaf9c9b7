"""HostTuning on a real (emulated) hypervisor host, through the dynamic-provider gRPC server.

apply (two reboots: the command line, then MAX_ACC_OUT_READ after ADVANCED_PCI_SETTINGS) ->
verified on the host; apply again -> no change and nothing run but one read; refresh -> drift
shows; delete -> the host's command line, files, sysfs values and firmware are what they were.

The lab's limits shape the inputs: QEMU's switch ports have no ACS capability (acs: false) and
QEMU does not emulate Max Read Request (maxReadRequest: false). The NIC firmware is the
mstconfig stand-in (tests/support/standins), installed on the host like the real tool.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.facts import gather_facts
from providers.host_tuning.provider import HostTuningProvider
from tests.lab.conftest import host_snapshot
from tests.support.provider_harness import ProviderServer, with_provider

pytestmark = pytest.mark.slow
STANDIN = Path(__file__).resolve().parents[1] / "support" / "standins" / "mstconfig-standin"
STANDIN_ON_HOST = "/usr/local/sbin/mstconfig-standin"


@pytest.fixture(scope="module", autouse=True)
def mstconfig_standin(lab):
    """The firmware tool on the shared lab host for this module, removed afterwards."""
    host = lab.ssh_host(lab.host(0))
    host.write_file(STANDIN_ON_HOST, STANDIN.read_bytes(), mode=0o755)
    yield
    host.run(["rm", "-rf", STANDIN_ON_HOST, "/var/lib/mstconfig-standin"])


def _sessions(host) -> int:
    """Commands sshd started since boot (this one included)."""
    text = host.run(["journalctl", "-t", "sshd", "--no-pager", "-o", "cat"]).text
    return text.count("Starting session: command")


def test_apply_verify_reapply_refresh_delete(lab, tmp_path):
    lab_host = lab.host(0)
    host = lab.ssh_host(lab_host)
    before = host_snapshot(host)
    inputs = with_provider(HostTuningProvider(), {
        "address": "127.0.0.1", "port": lab_host.spec.ssh_port, "user": "root",
        "hostKey": lab_host.host_key, "gpuSelector": ["1af4:1110"], "nicSelector": ["8086:10c9"],
        "acs": False, "maxReadRequest": False,
        "hugepages": {"perNode": {"0": 1, "1": 1}},
        "firmware": {"enabled": True, "tool": STANDIN_ON_HOST, "numVfs": 4},
        "sysctls": {"vm.swappiness": "10"}, "reboot": "allowed", "rebootTimeout": 900})
    with ProviderServer(config={"vela:sshPrivateKey": lab.key_path.read_text()},
                        log=tmp_path / "provider.log") as server:
        checked, failures = server.check("lab-0", {}, inputs)
        assert failures == []

        id_, outs = server.create("lab-0", checked)
        assert outs["reboots"] == 2 and outs["inSync"] and not outs["pendingReboot"]
        assert any(change.startswith("firmware") and "MAX_ACC_OUT_READ=44" in change
                   for change in outs["changes"])
        for node, gpu in enumerate(outs["gpus"]):
            assert gpu["vendorDevice"] == "1af4:1110" and gpu["numaNode"] == node
            nic = next(n for n in outs["nics"] if n["address"] == gpu["pairedNic"])
            assert nic["switch"] == gpu["switch"] and nic["numaNode"] == node

        facts = gather_facts(host)  # verified independently of the provider
        for token in ["intel_iommu=on", "iommu=pt", "vfio-pci.ids=1af4:1110",
                      "hugepages=0:1,1:1", "modprobe.blacklist=nouveau"]:
            assert token in facts.cmdline_args
        assert {facts.device(g["address"]).driver for g in outs["gpus"]} == {"vfio-pci"}
        assert [node.pool(1048576).total for node in facts.numa_nodes] == [1, 1]
        assert host.read_file("/proc/sys/vm/swappiness").strip() == b"10"
        firmware = host.run([STANDIN_ON_HOST, "-d", outs["nics"][0]["address"], "-e",
                             "q"]).text
        assert "MAX_ACC_OUT_READ" in firmware and "True(1)" in firmware

        sessions = _sessions(host)
        again = server.update("lab-0", id_, outs, checked)
        counted = _sessions(host) - sessions
        assert again["changes"] == [] and again["reboots"] == 0 and again["inSync"]
        assert counted == 2  # the update's one read, and this count
        assert server.diff("lab-0", id_, again, checked).changes is False

        host.run(["sysctl", "-q", "-w", "vm.swappiness=33"])
        _, refreshed = server.read("lab-0", id_, again)
        assert refreshed["inSync"] is False
        assert any("vm.swappiness" in drift for drift in refreshed["drift"])
        assert server.diff("lab-0", id_, refreshed, checked).changes is True

        server.delete("lab-0", id_, refreshed)
    after = host_snapshot(host)
    assert [line for line in after if line not in before] == []
    assert [line for line in before if line not in after] == []
