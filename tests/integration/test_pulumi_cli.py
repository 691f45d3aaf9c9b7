"""The real Pulumi engine (the CLI that scripts/setup builds), running the vela program inline
through the Automation API: what the engine decides (create, same, update, replace, delete and
their order), what it keeps in state, and what it refuses. Never skipped: without the CLI these
tests fail and say to run scripts/setup.

The lab test runs the dev stack's config on the session's lab host (tests/conftest.py), which it
leaves as it found it: preview, up, up again, then a VF count change that replaces the node's
pools while their guests exist, refresh, destroy. The node runs two VMs, one per socket (its GPU
stand-in, a VF of its socket's NIC, its socket's CPU), created in the same `up`. At each step
the host is checked for what exists (the tuned command line and boot unit, the two VF pools, the
defined guests with their devices and vCPU pins), and at the end it is exactly as it was before,
and the state on disk holds no line of the SSH key. TCG hosts share CI's 2 cores, so the guests
are defined but not started (`start: false`) and use no huge pages: booting a nested guest is
proven by the lab's HostTuning, SriovPool and GpuVm test. Host tuning still needs a reboot
(vfio-pci on the command line), and its removal another. (It grew to 2 nodes and back to 1, and
an earlier version from 2 to 3, to show nodes joining and leaving: two reboots and a host boot
more, about 11 of CI's 90 minutes. Which resources a node adds or removes, with which
dependencies and options, is what test_program.py checks of the program, and what the engine
then does with them is test_engine_rules.py's.) The node's resources are spread over two
provider processes (providerShards: 2), as a large cluster's would be.
"""

from __future__ import annotations

import json

import pytest
import yaml
from pulumi import automation as auto

from tests.lab.conftest import host_snapshot
from tests.support.cli import CliStack, config_strings
from tests.support.provider_harness import PROJECT_ROOT
from tests.support.sshd import free_port, keygen

# A cluster of no nodes, valid only because it says so (vela:allowEmpty).
EMPTY = {"vela:nodes": [], "vela:shape": {"vmsPerNode": 0}, "vela:allowEmpty": "true"}
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
def stack(tmp_path):
    cli_stack = CliStack(tmp_path, "ci")
    yield cli_stack
    cli_stack.destroy()
    cli_stack.remove()


def test_an_empty_cluster_previews_deploys_refreshes_and_destroys(stack):
    stack.configure(config_strings(EMPTY))
    preview = stack.preview()
    assert preview.ops() == {}  # no node, so no vela resource: the stack and the component
    assert preview.changes == {"create": 2}

    result = stack.up()
    assert result.outputs["summary"]["nodes"] == 0
    assert result.outputs["vmAddresses"] == {}
    assert stack.up().changes == {"same": result.changes["create"]}

    refresh = stack.refresh()
    assert refresh.changes == {"same": 2}
    assert stack.destroy().changes == {"delete": 2}
    assert stack.resources() == []


def test_a_cluster_of_no_nodes_is_refused_and_destroy_needs_no_valid_config(stack):
    """Without vela:allowEmpty, a config of no nodes fails preview (deploying it would delete
    every VM and revert every host). `pulumi destroy` does not run the program (the engine
    destroys from a NullSource: pkg/engine/destroy.go), so it works whatever the config."""
    without = {key: value for key, value in EMPTY.items() if key != "vela:allowEmpty"}
    stack.configure(config_strings(without))
    with pytest.raises(auto.errors.CommandError, match="vela:nodes is an empty list, so this "
                       "config declares a cluster of no nodes") as failure:
        stack.preview()
    assert "pulumi config set vela:allowEmpty true" in str(failure.value)
    assert "Traceback" not in str(failure.value)

    stack.configure(config_strings(EMPTY))
    assert stack.up().outputs["summary"]["nodes"] == 0
    # The config goes bad (a misspelt key, no nodes, no allowEmpty): preview refuses it, and
    # destroy removes what the stack holds all the same.
    stack.configure(config_strings({"vela:node": [], "vela:shap": {"vmsPerNode": 0}}))
    with pytest.raises(auto.errors.CommandError, match=r"vela:shap is not a vela setting \(did "
                       r"you mean vela:shape\?\)"):
        stack.preview()
    assert stack.destroy().changes == {"delete": 2}
    assert stack.resources() == []


NODE = {"name": "n", "address": "10.0.0.1", "hostKey": HOST_KEY}


@pytest.mark.parametrize(("key", "value", "words"), [
    ("vela:nodes", [{"name": "n", "address": "10.0.0.1;reboot", "hostKey": "x"}],
     r"vela:nodes\[0\] is invalid: address"),
    ("vela:maxRebootingNodes", "two", r"vela:maxRebootingNodes must be a whole number"),
    ("vela:maxRebootingNodes", "2.5", r"must be a whole number, got 2\.5: vela does not round "
                                      r"it, give 2 or 3"),
    ("vela:providerShards", "1e400", r"got 1e400, which is too large"),
    ("vela:shap", {"vmsPerNode": 0}, r"vela:shap is not a vela setting \(did you mean "
                                     r"vela:shape\?\)"),
    ("vela:gpuVm", {"address": "10.0.0.9"}, r"vela:gpuVm: address cannot be set here"),
    ("vela:sriovPool", {"pf": "ens9"}, r"vela:sriovPool: pf cannot be set here"),
    ("vela:hostTuning", {"hostKey": HOST_KEY}, r"vela:hostTuning: hostKey cannot be set here"),
    ("vela:nodes", [NODE, {**NODE, "name": "m", "port": 22}],
     r"vela:nodes\[1\] \(m\): address and port 10\.0\.0\.1:22 are already those of "
     r"vela:nodes\[0\] \(n\)"),
    ("vela:nodes", [NODE, {**NODE, "address": "10.0.0.2"}],
     r"vela:nodes\[1\]\.name: 'n' is already the name of vela:nodes\[0\]"),
    ("vela:shape", {"vmsPerNode": 0, "nicPorts": ["ens1.f0", "ens1-f0"]},
     r"nicPorts 'ens1\.f0' and 'ens1-f0' would give their SriovPools one resource name"),
    ("vela:nodeOverrides", {"n": "big"}, r"vela:nodeOverrides\.n must be an object of shape "
                                         r"fields"),
    ("vela:clusterName", "Prod_A", r"'Prod_A' is not a valid cluster name: use 1 to 31 "
                                   r"lower-case letters"),
])
def test_a_bad_config_value_fails_preview_naming_the_key(stack, key, value, words):
    base = {**EMPTY, "vela:nodes": [NODE]} if key == "vela:nodeOverrides" else EMPTY
    stack.configure(config_strings({**base, key: value}))
    with pytest.raises(auto.errors.CommandError, match=words) as failure:
        stack.preview()
    assert "Traceback" not in str(failure.value)
    assert stack.resources() == []


def test_a_private_key_in_a_public_key_field_fails_preview_unrepeated(stack, tmp_path):
    keygen(tmp_path / "pasted")
    private = (tmp_path / "pasted").read_text()
    body = [line for line in private.splitlines() if "-----" not in line]
    for config in ({"vela:nodes": [{**NODE, "hostKey": private}]},
                   {"vela:guest": {"sshKeys": [private]}}):
        stack.configure(config_strings({**EMPTY, **config}))
        with pytest.raises(auto.errors.CommandError,
                           match="this is a private key, not an SSH public key") as failure:
            stack.preview()
        assert not any(line[:12] in str(failure.value) for line in body)


def test_a_wrong_passphrase_fails_preview_as_one(stack, tmp_path):
    keygen(tmp_path / "locked", passphrase="the right one")
    secret = ("vela:sshPrivateKey", "vela:sshPrivateKeyPassphrase")
    stack.configure(config_strings({**EMPTY, "vela:sshPrivateKey": (tmp_path / "locked")
                                    .read_text(), "vela:sshPrivateKeyPassphrase": "not it"}),
                    secret_keys=secret)
    with pytest.raises(auto.errors.CommandError,
                       match="vela:sshPrivateKey: wrong passphrase for the secret SSH key"):
        stack.preview()


def test_a_key_that_is_not_a_secret_is_warned_about_and_never_deployed(stack, tmp_path):
    """The engine gives dynamic providers the whole stack config and stores it as the default
    provider's inputs, secret only where the config is: preview warns, up refuses."""
    keygen(tmp_path / "plain")
    key = (tmp_path / "plain").read_text()
    stack.configure(config_strings({**EMPTY, "vela:sshPrivateKey": key}))
    preview = stack.stack.preview()
    assert "warning: vela:sshPrivateKey is not a secret" in preview.stdout
    assert "pulumi config set --secret vela:sshPrivateKey" in preview.stdout
    with pytest.raises(auto.errors.CommandError, match="vela:sshPrivateKey is not a secret"):
        stack.up()
    # The program stopped before declaring anything: no provider took the key into the state.
    # (The CLI records an update's config in the backend's history whatever the program does:
    # the message says to replace the key.)
    assert not [r for r in stack.resources() if r["type"] != "pulumi:pulumi:Stack"]
    checkpoints = (stack.state_dir / ".pulumi" / "stacks").rglob("*.json")
    assert not any(key.splitlines()[1] in path.read_text() for path in checkpoints)


def test_the_ssh_key_reaches_the_state_only_encrypted(stack):
    """A secret config value, with provider shards: each explicit provider holds the key as an
    input; the state must keep it encrypted, as the CLI's passphrase secrets manager does."""
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAvelatestkeybody0123456789\n" \
          "-----END OPENSSH PRIVATE KEY-----\n"
    stack.configure(config_strings({**EMPTY, "vela:providerShards": "2",
                                    "vela:sshPrivateKey": key}),
                    secret_keys=("vela:sshPrivateKey",))
    stack.up()
    state = stack.state_text()
    assert "AAAAvelatestkeybody" not in state and "PRIVATE KEY" not in state
    providers = [r for r in stack.resources() if r["type"] == "pulumi:providers:pulumi-python"]
    assert len(providers) == 2
    assert all(json.dumps(r["inputs"]).count("ciphertext") for r in providers)


def test_a_host_error_reaches_the_user_as_its_message(stack, tmp_path):
    """Through the real engine: a node whose SSH port is closed fails its HostTuning with vela's
    message (host, what failed), not a Python traceback; nothing lands in the state."""
    keygen(tmp_path / "client")
    node = {"name": "n0", "address": "127.0.0.1", "port": free_port(), "hostKey": HOST_KEY}
    stack.configure(config_strings({"vela:nodes": [node], "vela:shape": {"vmsPerNode": 0,
                                                                         "nicPorts": []},
                                    "vela:sshPrivateKey": (tmp_path / "client").read_text()}),
                    secret_keys=("vela:sshPrivateKey",))
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.up()
    text = str(failure.value)
    assert f"127.0.0.1:{node['port']}" in text and "refused" in text, text
    assert "Traceback" not in text and 'File "' not in text, text
    assert "n0-host" not in stack.vela_resources()


# -- the dev stack on the lab ------------------------------------------------------------------
# The dev stack's NIC ports: an igb on its own root port per NUMA node, and the VM of that node.
PORTS = {"0000:45:00.0": "vm0", "0000:85:00.0": "vm1"}
POOLS = ["pci-0000-45-00-0", "pci-0000-85-00-0"]
DEPLOYED = r'''
set -u
echo "cmdline $(cat /proc/cmdline)"
echo "unit $(systemctl is-enabled vela-host-tuning.service 2>/dev/null || :)"
for pf in 0000:45:00.0 0000:85:00.0; do
  echo "numvfs $pf $(cat /sys/bus/pci/devices/$pf/sriov_numvfs)"
  for vf in /sys/bus/pci/devices/$pf/virtfn*; do
    driver=$(readlink "$vf/driver")
    echo "vf $pf $(readlink "$vf" | xargs basename) ${driver##*/}"
  done
done
echo "domains $(virsh -q list --all --name | xargs)"
for name in $(virsh -q list --all --name); do
  echo "state $name $(virsh domstate "$name")"
  virsh dumpxml "$name" | sed -n '/<source>/,/<\/source>/p' \
    | grep -o "bus=.*function='0x[0-9a-f]'" | sed "s/^/hostdev $name /"
  virsh dumpxml "$name" | grep -o "<vcpupin [^>]*>" | sed "s/^/pin $name /"
done
echo "boot $(cat /proc/sys/kernel/random/boot_id)"
'''


def dev_stack_config(lab, vfs: int = 1) -> dict[str, str]:
    """Pulumi.dev.yaml, pointed at the lab's host, as `pulumi config set` would."""
    document = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    for key in ("vela:labHosts", "vela:inventoryFile"):
        document.pop(key)
    document["vela:nodes"] = [
        {"name": host.name, "address": "127.0.0.1", "port": host.spec.ssh_port, "user": "root",
         "hostKey": host.host_key} for host in lab.hosts()]
    document["vela:shape"].pop("hugepages")
    document["vela:shape"]["vfsPerPort"] = vfs
    document["vela:gpuVm"].update({"start": False, "hugepages": False})
    document["vela:sshPrivateKey"] = lab.key_path.read_text()
    # Two provider processes, as a large cluster would use: each is configured from its own
    # (secret) inputs, so the key must reach both and be encrypted in the state.
    document["vela:providerShards"] = 2
    return config_strings(document)


def resources(node: str) -> list[str]:
    """The node's resources in dependency order: tuning, pools, VMs."""
    return [f"{node}-host", *(f"{node}-{pool}" for pool in POOLS),
            *(f"{node}-{vm}" for vm in PORTS.values())]


def deployed(host) -> dict[str, list[str]]:
    facts: dict[str, list[str]] = {}
    for line in host.run_script(DEPLOYED, timeout=120).text.splitlines():
        key, _, value = line.partition(" ")
        facts.setdefault(key, []).append(value)
    return facts


def assert_deployed(host, node: str, vfs: int = 1) -> str:
    """The node as the dev stack wants it: a VM per socket, each with the VFs of its socket's
    NIC and its own CPU; returns the host's boot id."""
    facts = deployed(host)
    cmdline = facts["cmdline"][0].split()
    assert {"intel_iommu=on", "iommu=pt", "vfio-pci.ids=1af4:1110"} <= set(cmdline), cmdline
    assert facts["unit"] == ["enabled"]
    vms = [f"{node}-{vm}" for vm in PORTS.values()]
    assert facts["domains"] == [" ".join(vms)]
    assert facts["state"] == [f"{vm} shut off" for vm in vms]
    assert sorted(facts["numvfs"]) == [f"{pf} {vfs}" for pf in PORTS]
    assert len(facts["vf"]) == vfs * len(PORTS)
    for line in facts["vf"]:
        pf, vf, driver = line.split()
        assert driver == "vfio-pci"
        bus, slot, function = vf.split(":")[1], *vf.split(":")[2].split(".")
        assert f"{node}-{PORTS[pf]} bus='0x{bus}' slot='0x{slot}' function='0x{function}'" in \
            facts["hostdev"], facts["hostdev"]
    # One vCPU each, on its own socket's CPU (the lab host has one per NUMA node).
    assert facts["pin"] == [f"{vm} <vcpupin vcpu='0' cpuset='{cpu}'/>"
                            for cpu, vm in enumerate(vms)], facts["pin"]
    return facts["boot"][0]


def assert_secret_free(stack: CliStack, private_key: str) -> None:
    text = stack.state_text()
    body = [line for line in private_key.splitlines() if line and "PRIVATE KEY" not in line]
    assert "PRIVATE KEY" not in text
    assert not any(line in text for line in body), "a line of the SSH key is in the state"


@pytest.mark.slow
def test_the_dev_stack_on_the_lab(lab, tmp_path):
    host = lab.ssh_host(lab.host(0))
    pristine = host_snapshot(host)
    node = lab.host(0).name
    key = lab.key_path.read_text()
    stack = CliStack(tmp_path, "dev")
    stack.configure(dev_stack_config(lab), secret_keys=("vela:sshPrivateKey",))

    # -- preview, up, then up again ----------------------------------------------------------
    preview = stack.preview()
    assert preview.ops() == {name: "create" for name in resources(node)}
    result = stack.up()
    assert result.ops() == {name: "create" for name in resources(node)}
    boot = assert_deployed(host, node)
    assert result.outputs["summary"]["nodes"] == 1
    vms = [f"{node}-{vm}" for vm in PORTS.values()]
    assert sorted(result.outputs["vmAddresses"]) == vms
    assert sorted(result.outputs["ncclEnvironment"]) == vms  # one environment per VM
    assert_secret_free(stack, key)

    again = stack.up()
    assert set(again.ops().values()) == {"same"}
    assert set(again.changes) == {"same"}, again.changes  # nothing else either: no provider
    assert_secret_free(stack, key)

    # -- 2 VFs per port: the kernel cannot change a live VF count, so the pool is replaced;
    # its guest holds a VF, so the engine replaces the guest around it (delete-before-replace
    # replaces dependents first), and the host is untouched -------------------------------
    stack.configure(dev_stack_config(lab, vfs=2), secret_keys=("vela:sshPrivateKey",))
    tuning, *replaced = resources(node)
    pools, vms = replaced[:len(POOLS)], replaced[len(POOLS):]
    preview = stack.preview()
    assert preview.ops(changed_only=True) == {name: "replace" for name in replaced}
    result = stack.up()
    assert result.ops(changed_only=True) == {name: "replace" for name in replaced}
    for pool, holder in zip(pools, vms, strict=True):  # each socket's VM holds its NIC's VF
        # The engine runs each pool's delete-before-replace chain on its own, so a pool's
        # delete may begin beside a VM's: the pool waits until the VM holding its VFs lets them
        # go (and may end before the other socket's VM is gone: a CI run saw it).
        assert result.step(holder, "delete-replaced").ended < \
            result.step(pool, "delete-replaced").ended
        for vm in vms:  # every VM is offered every VF of its node, so depends on every pool
            assert result.before((pool, "create-replacement"), (vm, "create-replacement"))
    assert assert_deployed(host, node, vfs=2) == boot
    assert_secret_free(stack, key)

    # -- refresh: the hosts are as the state says ---------------------------------------------
    refresh = stack.refresh()
    assert set(refresh.changes) == {"same"}, refresh.changes
    assert set(stack.up().changes) == {"same"}

    # -- destroy -----------------------------------------------------------------------------
    result = stack.destroy()
    assert result.ops() == {name: "delete" for name in resources(node)}
    assert host_snapshot(host) == pristine
    assert stack.resources() == []
    assert_secret_free(stack, key)
    stack.remove()
