"""GpuVm through the real provider server: check and diff as the engine calls them."""

from __future__ import annotations

import pytest

from providers.gpu_vm.provider import GpuVmProvider
from tests.support.provider_harness import UNKNOWN, ProviderServer, with_provider

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
GOOD = {"address": "10.0.0.5", "hostKey": HOST_KEY, "name": "vm-0", "vcpus": 16,
        "memoryGib": 64, "gpus": 2, "image": {"path": "/var/lib/libvirt/images/base.qcow2"},
        "vfs": [{"address": "0000:1b:00.2", "mac": "02:00:00:00:00:01", "numaNode": 0}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ProviderServer(config={}, log=tmp_path_factory.mktemp("p") / "log") as running:
        yield running


def _failures(server, **changes):
    return server.check("vm", {}, with_provider(GpuVmProvider(), {**GOOD, **changes}))[1]


def test_good_inputs_including_pool_outputs_and_unknowns(server):
    assert _failures(server) == []
    assert _failures(server, vcpus=16.0, gpus=2.0) == []
    assert _failures(server, vfs=UNKNOWN) == []


@pytest.mark.parametrize("changes, words", [
    ({"name": "VM 0"}, "domain name"),
    ({"gpus": -1}, "greater than or equal to 0"),
    ({"memoryGib": 0}, "greater than or equal to 1"),
    ({"gpus": ["0000:1b:00.0;rm"]}, "lspci -D"),
    ({"image": {"path": "relative.qcow2"}}, "absolute path"),
    ({"domainType": "xen"}, "'kvm' or 'qemu'"),
    ({"network": "default;x"}, "domain name"),
    ({"guest": {"user": "Root"}}, "user name"),
    ({"vfs": [{"address": "0000:1b:00.2"}, {"address": "0000:1b:00.2"}]}, "listed twice"),
])
def test_bad_inputs_fail_at_check(server, changes, words):
    failures = _failures(server, **changes)
    assert any(words in reason for _, reason in failures), failures


def test_diff_says_what_needs_a_replacement(server):
    inputs = with_provider(GpuVmProvider(), GOOD)
    outputs = {**inputs, "inSync": True, "uuid": "u"}
    assert server.diff("vm", "u", outputs, inputs).changes is False
    more_memory = server.diff("vm", "u", outputs, {**inputs, "memoryGib": 128})
    assert more_memory.changes and more_memory.replaces == []
    more_gpus = server.diff("vm", "u", outputs, {**inputs, "gpus": 4})
    assert more_gpus.replaces == ["gpus"] and more_gpus.delete_before_replace
