"""The whole program on the lab, through the engine stand-in: the dev stack's config with 2 nodes
(up, then up again), scaled to 3 (preview, then up), to 1, then destroyed. At each step the hosts
are checked for what exists: the tuned command line and boot unit, the VF pool, the defined
guest; a host outside the cluster, or removed from it, is exactly as it was before.

The third host boots when the cluster grows to it. Three TCG hosts share CI's 2 cores, so the
guests are defined but not started (`start: false`) and use no huge pages: booting nested
guests is proven by the GpuVm lab test. Host tuning still needs a reboot per node (IOMMU and
vfio-pci on the command line), rolling one node at a time as the dev stack says
(maxRebootingNodes 1). The nodes are spread over two provider processes
(providerShards: 2), as a large cluster's would be.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.lab.conftest import booted_lab, host_snapshot
from tests.support.engine import Engine
from tests.support.provider_harness import PROJECT_ROOT

pytestmark = pytest.mark.slow
PF = "0000:45:00.0"  # the igb on its own root port: the dev stack's NIC port
POOL = "pci-0000-45-00-0"
DEPLOYED = r'''
set -u
echo "cmdline $(cat /proc/cmdline)"
echo "unit $(systemctl is-enabled vela-host-tuning.service 2>/dev/null || :)"
echo "numvfs $(cat /sys/bus/pci/devices/0000:45:00.0/sriov_numvfs)"
for vf in /sys/bus/pci/devices/0000:45:00.0/virtfn*; do
  driver=$(readlink "$vf/driver"); echo "vf $(readlink "$vf" | xargs basename) ${driver##*/}"
done
echo "domains $(virsh -q list --all --name | xargs)"
for name in $(virsh -q list --all --name); do
  echo "state $name $(virsh domstate "$name")"
  virsh dumpxml "$name" | sed -n '/<source>/,/<\/source>/p' | grep -o "bus=.*function='0x[0-9a-f]'" \
    | sed "s/^/hostdev $name /"
done
echo "boot $(cat /proc/sys/kernel/random/boot_id)"
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(tmp_path_factory, hosts=2) as lab:
        yield lab


def add_host(lab, index: int):
    """Boot lab host `index` (a server racked later) and take its snapshot before vela."""
    lab.up(index + 1)
    host = lab.ssh_host(lab.host(index))
    return host, host_snapshot(host)


def dev_stack_config(lab, nodes: int) -> dict[str, str]:
    """Pulumi.dev.yaml, pointed at the first `nodes` lab hosts, as `pulumi config set` would."""
    document = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    for key in ("vela:labHosts", "vela:inventoryFile"):
        document.pop(key)
    document["vela:nodes"] = [
        {"name": host.name, "address": "127.0.0.1", "port": host.spec.ssh_port, "user": "root",
         "hostKey": host.host_key} for host in lab.hosts()[:nodes]]
    document["vela:shape"].pop("hugepages")
    document["vela:gpuVm"].update({"start": False, "hugepages": False})
    document["vela:sshPrivateKey"] = lab.key_path.read_text()
    # Two provider processes, as a large cluster would use: each is configured from its own
    # (secret) inputs, so the key must reach both and be encrypted in the state.
    document["vela:providerShards"] = 2
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in document.items()}


def resources(node: str) -> list[str]:
    """The node's resources in dependency order."""
    return [f"{node}-host", f"{node}-{POOL}", f"{node}-vm0"]


def deployed(host) -> dict[str, list[str]]:
    facts: dict[str, list[str]] = {}
    for line in host.run_script(DEPLOYED, timeout=120).text.splitlines():
        key, _, value = line.partition(" ")
        facts.setdefault(key, []).append(value)
    return facts


def assert_deployed(host, node: str) -> str:
    """The node as the dev stack wants it; returns its boot id."""
    facts = deployed(host)
    cmdline = facts["cmdline"][0].split()
    assert {"intel_iommu=on", "iommu=pt", "vfio-pci.ids=1af4:1110"} <= set(cmdline), cmdline
    assert facts["unit"] == ["enabled"]
    assert facts["numvfs"] == ["1"]
    vf, driver = facts["vf"][0].split()
    assert driver == "vfio-pci"
    assert facts["domains"] == [f"{node}-vm0"]
    assert facts["state"] == [f"{node}-vm0 shut off"]
    bus, slot, function = vf.split(":")[1], *vf.split(":")[2].split(".")
    assert f"{node}-vm0 bus='0x{bus}' slot='0x{slot}' function='0x{function}'" in \
        facts["hostdev"], facts["hostdev"]
    return facts["boot"][0]


def assert_secret_free(engine: Engine, private_key: str) -> None:
    text = engine.state_text()
    body = [line for line in private_key.splitlines() if line and "PRIVATE KEY" not in line]
    assert "PRIVATE KEY" not in text
    assert not any(line in text for line in body), "a line of the SSH key is in the state"


def custom_ops(result) -> dict[str, str]:
    return {name: op for name, op in result.ops().items()
            if name.startswith("lab-") and not name.endswith("dev")}


def test_up_scale_out_scale_in_destroy(lab, tmp_path):
    hosts, pristine = (list(pair) for pair in zip(*(add_host(lab, i) for i in range(2))))
    names = [f"lab-{index}" for index in range(3)]
    key = lab.key_path.read_text()
    engine = Engine(stack="dev", config=dev_stack_config(lab, 2),
                    secret_keys=["vela:sshPrivateKey"], state_dir=tmp_path / "state", log=print)

    # -- up with 2 nodes, then again --------------------------------------------------------
    result = engine.up()
    assert result.ok, result.errors
    assert custom_ops(result) == {name: "create" for n in names[:2] for name in resources(n)}
    # Rolling: node 1's tuning started after node 0's whole stack was done.
    assert result.step(f"{names[0]}-vm0").finished <= result.step(f"{names[1]}-host").started
    boots = [assert_deployed(hosts[i], names[i]) for i in range(2)]
    assert result.outputs["summary"]["nodes"] == 2
    assert sorted(result.outputs["vmAddresses"]) == [f"{n}-vm0" for n in names[:2]]
    assert_secret_free(engine, key)

    again = engine.up()
    assert again.ok, again.errors
    assert set(custom_ops(again).values()) == {"same"}

    # -- scale to 3: only the new node's resources are created --------------------------------
    host, snapshot = add_host(lab, 2)
    hosts.append(host)
    pristine.append(snapshot)
    engine.config = dev_stack_config(lab, 3)
    preview = engine.preview()
    assert preview.ok, preview.errors
    assert {name for name, op in custom_ops(preview).items() if op != "same"} == \
        set(resources(names[2]))
    assert set(custom_ops(preview)[name] for name in resources(names[2])) == {"create"}
    result = engine.up()
    assert result.ok, result.errors
    assert {name: op for name, op in custom_ops(result).items() if op != "same"} == \
        {name: "create" for name in resources(names[2])}
    assert [assert_deployed(hosts[i], names[i]) for i in range(2)] == boots  # not rebooted
    assert_deployed(hosts[2], names[2])
    assert_secret_free(engine, key)

    # -- scale to 1: the removed nodes' resources are deleted, guests first -------------------
    engine.config = dev_stack_config(lab, 1)
    result = engine.up()
    assert result.ok, result.errors
    assert {name: op for name, op in custom_ops(result).items() if op != "same"} == \
        {name: "delete" for n in names[1:] for name in resources(n)}
    for node in names[1:]:
        vm, pool, host = (result.step(name, "delete") for name in reversed(resources(node)))
        assert vm.finished <= pool.started and pool.finished <= host.started
    assert host_snapshot(hosts[1]) == pristine[1]
    assert host_snapshot(hosts[2]) == pristine[2]
    assert assert_deployed(hosts[0], names[0]) == boots[0]
    assert {r.name for r in engine.state().values() if r.custom and "dynamic" in r.type} == \
        set(resources(names[0]))

    # -- destroy -----------------------------------------------------------------------------
    result = engine.destroy()
    assert result.ok, result.errors
    assert custom_ops(result) == {name: "delete" for name in resources(names[0])}
    assert [host_snapshot(host) for host in hosts] == pristine
    assert engine.state() == {}
