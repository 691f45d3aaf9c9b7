"""SriovPool through the real provider server: check and diff as the engine calls them."""

from __future__ import annotations

import pytest

from providers.sriov_pool.provider import SriovPoolProvider
from tests.support.provider_harness import UNKNOWN, ProviderServer, with_provider

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
INVENTORY = [{"address": "0000:3b:00.0", "interfaces": ["ens1f0np0"], "sriovTotalVfs": 8},
             {"address": "0000:3b:00.1", "interfaces": ["ens1f1np1"], "sriovTotalVfs": 8}]
GOOD = {"address": "10.0.0.5", "hostKey": HOST_KEY, "pf": "ens1f0np0", "numVfs": 8,
        "nicInventory": INVENTORY}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ProviderServer(config={}, log=tmp_path_factory.mktemp("p") / "log") as running:
        yield running


def _failures(server, **changes):
    inputs = with_provider(SriovPoolProvider(), {**GOOD, **changes})
    return server.check("pool", {}, inputs)[1]


def test_good_inputs(server):
    assert _failures(server) == []
    assert _failures(server, numVfs=8.0, pf="0000:3b:00.1") == []
    assert _failures(server, nicInventory=UNKNOWN) == []  # HostTuning not created yet


@pytest.mark.parametrize("changes, words", [
    ({"numVfs": 9}, "offers at most 8 VFs (sriov_totalvfs), not 9: on ConnectX the NIC "
                    "firmware's NUM_OF_VFS caps it"),
    ({"pf": "ens9f0"}, "pf 'ens9f0' is not one of this host's NIC ports: 0000:3b:00.0 "
                       "(ens1f0np0), 0000:3b:00.1 (ens1f1np1)"),
    ({"pf": "ens1f0;reboot"}, "neither a PCI address"),
    ({"network": {"name": "pool;rm"}}, "lower-case letters"),
    ({"cluster": "a b"}, "lower-case letters"),
    ({"driver": "igbvf"}, "'vfio-pci' or 'host'"),
    ({"numVfs": -1}, "greater than or equal to 0"),
])
def test_bad_inputs_fail_at_check(server, changes, words):
    failures = _failures(server, **changes)
    assert any(words in reason for _, reason in failures), failures


def test_diff(server):
    inputs = with_provider(SriovPoolProvider(), GOOD)
    outputs = {**inputs, "inSync": True, "vfs": []}
    assert server.diff("pool", "x", outputs, inputs).changes is False
    recount = server.diff("pool", "x", outputs, {**inputs, "numVfs": 4})
    assert recount.replaces == ["numVfs"] and recount.delete_before_replace
    assert server.diff("pool", "x", outputs, {**inputs, "pfMtu": 9000}).replaces == []
    moved = server.diff("pool", "x", outputs, {**inputs, "pf": "ens1f1np1"})
    assert moved.replaces == ["pf"] and moved.delete_before_replace
    assert server.diff("pool", "x", {**outputs, "inSync": False}, inputs).changes
