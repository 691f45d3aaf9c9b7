"""The program (`__main__.py`) under Pulumi's mocks: config validation and exports."""

from __future__ import annotations

import json
import runpy

import pulumi
import pytest

from tests.support.provider_harness import PROJECT_ROOT

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return [f"{args.name}-id", args.inputs]

    def call(self, args):
        return {}


def _run(nodes) -> dict:
    pulumi.runtime.set_mocks(_Mocks(), project="vela", stack="dev", preview=True)
    pulumi.runtime.set_all_config({"vela:nodes": json.dumps(nodes)})
    try:
        return runpy.run_path(str(PROJECT_ROOT / "__main__.py"))
    finally:
        pulumi.runtime.set_all_config({})


def test_valid_inventory():
    namespace = _run([{"name": "node-0", "address": "10.0.0.10", "port": 22.0,
                       "hostKey": HOST_KEY + " root@node-0"}])
    node, = namespace["nodes"]
    assert (node.name, node.port, node.user, node.host_key) == ("node-0", 22, "root", HOST_KEY)


@pytest.mark.parametrize("nodes, expected", [
    ([{"name": "n", "address": "10.0.0.1;reboot", "hostKey": HOST_KEY}],
     r"vela:nodes\[0\] is invalid: address"),
    ([{"name": "n", "address": "10.0.0.1", "port": 70000, "hostKey": HOST_KEY}],
     r"vela:nodes\[0\] is invalid: port.*TCP port"),
    ([{"name": "n", "address": "10.0.0.1", "hostKey": "not a key"}],
     r"hostKey.*not a valid|hostKey.*SSH public key"),
    ([{"name": "n", "address": "10.0.0.1"}], r"hostKey: Field required"),
    ([{"name": "a", "address": "10.0.0.1", "hostKey": HOST_KEY}] * 2, r"repeated: \['a'\]"),
    ({"name": "a"}, r"must be a list"),
])
def test_invalid_inventory_names_the_key_and_the_reason(nodes, expected):
    with pytest.raises(pulumi.RunError, match=expected):
        _run(nodes)


def test_inventory_file_from_the_lab(tmp_path):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"version": 1, "privateKeyFile": "/x/id", "hosts": [
        {"name": "lab-0", "address": "127.0.0.1", "port": 40022, "user": "root",
         "hostKey": HOST_KEY}]}))
    pulumi.runtime.set_mocks(_Mocks(), project="vela", stack="dev", preview=True)
    pulumi.runtime.set_all_config({"vela:inventoryFile": str(inventory)})
    try:
        namespace = runpy.run_path(str(PROJECT_ROOT / "__main__.py"))
        assert [(n.name, n.port) for n in namespace["nodes"]] == [("lab-0", 40022)]
        pulumi.runtime.set_all_config({"vela:inventoryFile": str(tmp_path / "missing.json")})
        with pytest.raises(pulumi.RunError, match="scripts/lab up"):
            runpy.run_path(str(PROJECT_ROOT / "__main__.py"))
    finally:
        pulumi.runtime.set_all_config({})
