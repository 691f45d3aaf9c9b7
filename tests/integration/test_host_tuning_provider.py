"""HostTuning through the real provider server: check, diff, and errors as users see them."""

from __future__ import annotations

import pytest

from providers.host_tuning.provider import HostTuningProvider
from tests.support.provider_harness import (
    UNKNOWN,
    ProviderCallError,
    ProviderServer,
    with_provider,
)

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
GOOD = {"address": "10.0.0.5", "port": 22, "user": "root", "hostKey": HOST_KEY,
        "hugepages": {"perNode": {"0": 8, "1": 8}}, "firmware": {"numVfs": 8}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ProviderServer(config={}, log=tmp_path_factory.mktemp("provider") / "log") as running:
        yield running


def _check(server, **changes):
    inputs = with_provider(HostTuningProvider(), {**GOOD, **changes})
    return dict(server.check("node0", {}, inputs)[1])


def test_good_inputs_and_floats_pass(server):
    assert _check(server) == {}
    assert _check(server, port=22.0, firmware={"numVfs": 8.0}) == {}


@pytest.mark.parametrize("changes, field, words", [
    ({"mode": "vmx"}, "mode", "'vm' or 'baremetal'"),
    ({"hugepages": {"total": -1}}, "hugepages.total", "greater than or equal to 0"),
    ({"hugepages": {"total": 4, "perNode": {"0": 2}}}, "hugepages", "either total or perNode"),
    ({"firmware": {"numVfs": 500}}, "firmware.numVfs", "less than or equal to 127"),
    ({"port": "ssh"}, "port", "TCP port"),
    ({"maxReadRequest": 3000}, "maxReadRequest", "4096"),
    ({"gpuSelector": ["amd-gpu"]}, "gpuSelector.0", "not a known device"),
    ({"gpuSelector": []}, "gpuSelector", "at least one GPU"),
    ({"address": "10.0.0.5;reboot"}, "address", "not a valid host address"),
    ({"sysctls": {"net.core;rm -rf /": "1"}}, "sysctls", "not a sysctl name"),
    ({"sysctls": {"net.core.rmem_max": "1; reboot"}}, "sysctls", "characters"),
    ({"firmware": {"tool": "/tmp/$(reboot)"}}, "firmware.tool", "absolute path"),
    ({"firmware": {"settings": {"num_of_vfs; x": 1}}}, "firmware.settings", "parameter name"),
    ({"reboot": "sometimes"}, "reboot", "'never' or 'allowed'"),
    ({"bogus": 1}, "bogus", "Extra inputs are not permitted"),
])
def test_bad_inputs_fail_at_check_with_the_field_and_the_reason(server, changes, field, words):
    failures = _check(server, **changes)
    assert field in failures, failures
    assert words in failures[field]


def test_check_runs_nothing_on_the_host(sshd, server):
    """Check is validation only: even a valid target on a live sshd sees no connection."""
    logins = sshd.logins()
    assert _check(server, address="127.0.0.1", port=sshd.port, hostKey=sshd.host_key) == {}
    assert _check(server, address="127.0.0.1;x", port=sshd.port)
    assert sshd.logins() == logins


def test_unknown_values_in_preview_pass_check(server):
    assert _check(server, address=UNKNOWN, hostKey=UNKNOWN) == {}


def test_diff_is_pure_and_field_by_field(server):
    inputs = with_provider(HostTuningProvider(), GOOD)
    outputs = {**inputs, "inSync": True, "pendingReboot": False, "gpus": []}
    assert server.diff("node0", "10.0.0.5:22", outputs, inputs).changes is False
    moved = server.diff("node0", "10.0.0.5:22", outputs, {**inputs, "address": "10.0.0.6"})
    assert moved.changes and moved.replaces == ["address"] and moved.delete_before_replace
    tuned = server.diff("node0", "10.0.0.5:22", outputs, {**inputs, "mode": "baremetal"})
    assert tuned.changes and tuned.replaces == []
    drifted = server.diff("node0", "10.0.0.5:22", {**outputs, "inSync": False}, inputs)
    assert drifted.changes and drifted.replaces == []


def test_missing_key_is_one_clear_line(server):
    with pytest.raises(ProviderCallError) as caught:
        server.create("node0", with_provider(HostTuningProvider(), GOOD))
    assert not caught.value.traceback and "\n" not in caught.value.details
    assert caught.value.details.startswith("no SSH private key")
    assert "pulumi config set --secret vela:sshPrivateKey" in caught.value.details


def test_originals_survive_the_wire_with_their_absent_values():
    """Pulumi drops null values inside outputs; "this argument was absent" is an original
    value delete must restore, so the originals travel as one JSON string."""
    from providers.common import originals as saved
    from providers.errors import VelaError
    from providers.host_tuning.target import Target
    from tests.support.provider_harness import from_struct, to_struct

    originals = Target(kernel_args={"iommu": None, "hugepages": "hugepages=4"},
                       firmware={"0000:1b:00.0": {"MAX_ACC_OUT_READ": None, "SRIOV_EN": 0}})
    wire = from_struct(to_struct({"originals": saved.record(originals),
                                  "asObject": originals.model_dump(mode="json")}))
    assert saved.load(Target, None, wire, host="node0", path="/x", error=VelaError) == originals
    assert "iommu" not in wire["asObject"]["kernel_args"]  # what an object would have lost
