"""The program (`__main__.py`) and VelaCluster under Pulumi's mocks: what is registered, with
which names, parents, dependencies and options, for 1, 2, 16 and 2,000 nodes; config errors;
secrets; exports."""

from __future__ import annotations

import json

import pulumi
import pytest

from tests.support.program import HOST_KEY, base_config, lab_like_nodes, run_program

SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n"


def _short(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


@pytest.mark.parametrize("count", [1, 2, 16, 2000])
def test_resources_per_node_with_parents_dependencies_and_options(count):
    run = run_program(base_config(lab_like_nodes(count)))
    cluster, = run.of_type("VelaCluster")
    hosts, pools, vms = run.of_type("HostTuning"), run.of_type("SriovPool"), run.of_type("GpuVm")
    assert (len(hosts), len(pools), len(vms)) == (count, 2 * count, count)
    by_name = run.by_name()
    for index in (0, count - 1):
        node = f"node-{index}"
        host = by_name[f"{node}-host"]
        ports = [by_name[f"{node}-ens1f0"], by_name[f"{node}-ens2f0"]]
        vm = by_name[f"{node}-vm0"]
        assert {r.parent for r in (host, *ports, vm)} == {cluster.urn}
        assert host.dependencies == []  # reboot "never": nodes change in parallel
        assert all(p.dependencies == [host.urn] for p in ports)
        assert sorted(vm.dependencies) == sorted([host.urn, *(p.urn for p in ports)])
        assert vm.delete_before_replace and not host.delete_before_replace
        assert vm.inputs["name"] == f"{node}-vm0" and vm.inputs["gpus"] == 8
        assert [p.inputs["pf"] for p in ports] == ["ens1f0", "ens2f0"]
        assert ports[0].inputs["node"] == node and ports[0].inputs["cluster"] == "dev"
        # Nothing derived from a secret is an output, so no output needs re-marking.
        assert all(r.additional_secret_outputs == [] for r in (host, *ports, vm))
        assert all(r.provider == "" for r in (host, *ports, vm))  # the default provider


def test_adding_a_node_leaves_the_others_untouched():
    two = run_program(base_config(lab_like_nodes(2))).by_name()
    three = run_program(base_config(lab_like_nodes(3))).by_name()
    assert set(three) - set(two) == {"node-2-host", "node-2-ens1f0", "node-2-ens2f0",
                                     "node-2-vm0"}
    for name, registration in two.items():
        assert three[name].inputs == registration.inputs
        assert sorted(three[name].dependencies) == sorted(registration.dependencies)


def test_rolling_reboots_wait_for_the_previous_batch():
    config = base_config(lab_like_nodes(4), **{"vela:reboot": "allowed",
                                               "vela:maxRebootingNodes": "2"})
    by_name = run_program(config).by_name()
    assert by_name["node-0-host"].dependencies == by_name["node-1-host"].dependencies == []
    waits = {_short(urn) for urn in by_name["node-2-host"].dependencies}
    assert waits == {"node-0-host", "node-0-ens1f0", "node-0-ens2f0", "node-0-vm0"}
    assert {_short(u) for u in by_name["node-3-host"].dependencies} >= {"node-1-vm0"}
    assert by_name["node-2-host"].inputs["reboot"] == "allowed"


def test_per_node_overrides_and_vf_shares():
    nodes = lab_like_nodes(2)
    nodes[1]["overrides"] = {"vmsPerNode": 2, "gpusPerVm": 4}
    config = base_config(nodes, **{"vela:nodeOverrides": {"node-0": {"nicPorts": ["ens9"]}}})
    config["vela:shape"] = json.dumps({"vmsPerNode": 1, "gpusPerVm": 8, "wholeNodes": True,
                                       "nicPorts": ["ens1f0"], "vfsPerPort": 2})
    run = run_program(config)
    by_name = run.by_name()
    assert by_name["node-0-ens9"].inputs["numVfs"] == 2
    assert {"node-1-vm0", "node-1-vm1"} <= set(by_name)
    assert by_name["node-1-vm1"].inputs["gpus"] == 4
    # Two VMs split their node by NUMA node; one VM has the whole node.
    assert by_name["node-1-vm1"].inputs["hostShare"] == {"index": 1, "count": 2}
    assert "hostShare" not in by_name["node-0-vm0"].inputs
    summary = run.namespace["cluster"].args
    assert [summary.shape_of(n).vms_per_node for n in summary.nodes] == [1, 2]


def test_provider_shards_spread_nodes_and_carry_the_key_as_a_secret():
    run = run_program(base_config(lab_like_nodes(16), **{"vela:providerShards": "4"}))
    shards = [r for r in run.registrations if r.type == "pulumi:providers:pulumi-python"]
    assert len(shards) == 4
    by_name = run.by_name()
    for index in range(16):
        node = f"node-{index}"
        refs = {by_name[f"{node}-{suffix}"].provider
                for suffix in ("host", "ens1f0", "ens2f0", "vm0")}
        assert len(refs) == 1 and refs.pop().rsplit("::", 1)[0] in {s.urn for s in shards}
    used = {by_name[f"node-{i}-host"].provider.rsplit("::", 1)[0] for i in range(16)}
    assert len(used) > 1
    # An explicit provider is configured from its own inputs: the key travels there, as a
    # secret (the engine stores it encrypted).
    key = shards[0].wire["vela:sshPrivateKey"]
    assert key["4dabf18193072939515e22adb298388d"] == "1b47061264138c4ac30d75fd1eb44270"
    assert key["value"] == SECRET


def test_the_private_key_reaches_no_resource_input():
    run = run_program(base_config(lab_like_nodes(2)))
    for registration in run.registrations:
        assert "PRIVATE KEY" not in json.dumps(registration.inputs, default=str)


def test_exports():
    run = run_program(base_config(lab_like_nodes(2)))
    cluster = run.namespace["cluster"]
    assert sorted(cluster.vms) == ["node-0-vm0", "node-1-vm0"]
    from components.program import hostfile, summary

    assert hostfile({"node-0-vm0": ["192.168.122.10"], "node-1-vm0": []}, cluster.args) == \
        "192.168.122.10 slots=8\n"
    assert summary(cluster.args) == {"name": "dev", "mode": "vm", "nodes": 2, "vms": 2,
                                     "gpus": 16, "vfs": 4, "reboot": "never",
                                     "maxRebootingNodes": 1}


@pytest.mark.parametrize("changes, expected", [
    ({"vela:nodes": [{"name": "n", "address": "10.0.0.1;reboot", "hostKey": HOST_KEY}]},
     r"vela:nodes\[0\] is invalid: address"),
    ({"vela:nodes": [{"name": "n", "address": "10.0.0.1", "port": 70000, "hostKey": HOST_KEY}]},
     r"vela:nodes\[0\] is invalid: port.*TCP port"),
    ({"vela:nodes": [{"name": "n", "address": "10.0.0.1"}]}, r"hostKey: Field required"),
    ({"vela:nodes": [{"name": "a", "address": "10.0.0.1", "hostKey": HOST_KEY}] * 2},
     r"vela:nodes\[1\]\.name: 'a' is already the name of vela:nodes\[0\]"),
    ({"vela:nodes": {"name": "a"}}, r"must be a list"),
    ({"vela:shape": {"vmsPerNode": 1}}, r"give vcpus and memoryGib for each VM, or wholeNodes"),
    ({"vela:shape": {"nicPorts": ["bad;port"], "wholeNodes": True}}, r"NIC port 'bad;port'"),
    ({"vela:nodeOverrides": {"ghost": {"vmsPerNode": 0}}}, r"nodes not in the inventory"),
    ({"vela:nodeOverrides": {"node-0": {"gpusPerVm": 99}}},
     r"node node-0: overrides: gpusPerVm: Input should be less than or equal to 16"),
    ({"vela:mode": "container"}, r"mode: Input should be 'vm' or 'baremetal'"),
    ({"vela:maxRebootingNodes": "two"}, r"vela:maxRebootingNodes must be a whole number"),
    ({"vela:image": None}, r"VMs need an image"),
])
def test_invalid_config_names_the_key_and_the_reason(changes, expected):
    config = base_config(lab_like_nodes(1))
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(pulumi.RunError, match=expected):
        run_program(config)


def test_inventory_file_from_the_lab(tmp_path):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"version": 1, "privateKeyFile": "/x/id", "hosts": [
        {"name": "lab-0", "address": "127.0.0.1", "port": 40022, "user": "root",
         "hostKey": HOST_KEY}]}))
    config = base_config([], **{"vela:inventoryFile": str(inventory)})
    config.pop("vela:nodes")
    run = run_program(config)
    assert [(n.name, n.port) for n in run.namespace["cluster"].args.nodes] == [("lab-0", 40022)]
    config["vela:inventoryFile"] = str(tmp_path / "missing.json")
    with pytest.raises(pulumi.RunError, match="scripts/lab up"):
        run_program(config)


def test_the_dev_stack_config_is_valid(tmp_path):
    """Pulumi.dev.yaml as the CLI would pass it, against a lab inventory of 2 hosts."""
    import yaml

    from tests.support.provider_harness import PROJECT_ROOT

    document = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"version": 1, "hosts": [
        {"name": f"lab-{i}", "address": "127.0.0.1", "port": 40022 + i, "hostKey": HOST_KEY}
        for i in range(2)]}))
    config = {key: value if isinstance(value, str) else json.dumps(value)
              for key, value in document.items()}
    config["vela:inventoryFile"] = str(inventory)
    run = run_program(config)
    assert len(run.of_type("GpuVm")) == 4  # two per host, one per socket
    assert run.by_name()["lab-1-vm1"].inputs["hostShare"] == {"index": 1, "count": 2}
    vm = run.by_name()["lab-0-vm0"].inputs
    assert vm["domainType"] == "qemu" and vm["kernelBoot"]["kernel"].endswith("vmlinux")
