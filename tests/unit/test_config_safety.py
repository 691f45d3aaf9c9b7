"""Stack config that could do harm is refused at preview, through the real program under the
engine's mocks (`run_program`): a config of no nodes (which would delete every VM and revert
every host), keys vela does not read, pass-through objects that would move a resource to
another host or give two resources one identity, two nodes for one host, two ports for one
pool; numbers that are not whole, finite or exact; names explained in words; and the SSH keys:
a private key pasted where a public one goes is never echoed, a wrong passphrase is called one,
and a key that is not a secret is warned about at preview.

The engine's own part (preview and destroy through the real CLI) is in
tests/integration/test_pulumi_cli.py.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pulumi
import pytest

from components.cluster import port_slug
from components.program import KNOWN_KEYS, LARGEST_INTEGER
from providers.errors import InvalidValue
from providers.host.keys import KeyFile, SecretKey, encrypted_key, parse_public_key
from providers.sriov_pool.observe import paths, unit_name
from providers.sriov_pool.spec import SriovPoolArgs
from tests.support.program import HOST_KEY, base_config, lab_like_nodes, run_program
from tests.support.provider_harness import PROJECT_ROOT
from tests.support.sshd import keygen


def _config(**changes) -> dict[str, str]:
    """base_config for one node, with `changes` (None removes a key; objects become JSON)."""
    config = base_config(lab_like_nodes(1))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value if isinstance(value, str) else json.dumps(value)
    return config


def _refused(config: dict[str, str], **options) -> str:
    """The program's message for a config it refuses: a RunError, shown without traceback."""
    with pytest.raises(pulumi.RunError) as caught:
        run_program(config, **options)
    return str(caught.value)


# -- 1. no accidental wipe ---------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "source"), [
    ({"vela:nodes": []}, "vela:nodes is an empty list"),
    ({"vela:nodes": None}, "neither vela:nodes nor vela:inventoryFile is set"),
])
def test_a_config_of_no_nodes_is_refused_unless_allowed(changes, source):
    message = _refused(_config(**changes))
    assert message.startswith(source)
    assert "delete every VM" in message and "`pulumi destroy`" in message
    assert "pulumi config set vela:allowEmpty true" in message
    run = run_program(_config(**changes, **{"vela:allowEmpty": "true"}))
    assert run.of_type("VelaCluster") and not run.of_type("HostTuning")
    assert run.namespace["cluster"].args.nodes == []


def test_allow_empty_is_true_or_false():
    assert "must be true or false, got 'yes'" in _refused(
        _config(**{"vela:nodes": [], "vela:allowEmpty": "yes"}))
    # false is no permission: the empty cluster is refused as without the key.
    assert "empty list" in _refused(_config(**{"vela:nodes": [], "vela:allowEmpty": "false"}))
    # With nodes, allowEmpty changes nothing.
    assert len(run_program(_config(**{"vela:allowEmpty": "true"})).of_type("HostTuning")) == 1


def test_an_inventory_file_is_read_or_refused_never_empty(tmp_path):
    missing = tmp_path / "gone.json"
    message = _refused(_config(**{"vela:nodes": None, "vela:inventoryFile": str(missing),
                                  "vela:allowEmpty": "true"}))
    assert str(missing) in message and "does not exist" in message
    no_hosts = tmp_path / "nohosts.json"
    no_hosts.write_text(json.dumps({"version": 1}))
    message = _refused(_config(**{"vela:nodes": None, "vela:inventoryFile": str(no_hosts)}))
    assert str(no_hosts) in message and 'no "hosts" list' in message
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": 1, "hosts": []}))
    message = _refused(_config(**{"vela:nodes": None, "vela:inventoryFile": str(empty)}))
    assert message.startswith(f"the inventory file {empty} lists no hosts")
    assert _refused(_config(**{"vela:nodes": None, "vela:inventoryFile": " "})).startswith(
        "vela:inventoryFile is empty")
    message = _refused(_config(**{"vela:inventoryFile": str(empty)}))
    assert "vela:nodes and vela:inventoryFile are both set" in message


@pytest.mark.parametrize(("key", "words"), [
    ("vela:shap", "vela:shap is not a vela setting (did you mean vela:shape?)"),
    ("vela:node", "vela:node is not a vela setting (did you mean vela:nodes?)"),
    ("vela:sshprivatekey", "did you mean vela:sshPrivateKey?"),
    ("vela:maxRebootNodes", "did you mean vela:maxRebootingNodes?"),
    ("vela:shape.vmsPerNode", "vela:shape.vmsPerNode is a key of its own, not a field of "
                              "vela:shape: set fields with `pulumi config set --path"),
    ("vela:frobnicate", "vela:frobnicate is not a vela setting (vela reads vela:nodes, "),
])
def test_unknown_keys_are_refused_naming_the_closest_known_one(key, words):
    message = _refused(_config(**{key: "2"}))
    assert message.startswith("unknown stack config: ") and words in message
    assert "pulumi config rm" in message


def test_a_misspelt_nodes_key_is_named_before_the_empty_cluster():
    message = _refused(_config(**{"vela:nodes": None, "vela:node": lab_like_nodes(2)}))
    assert message.startswith("unknown stack config: vela:node is not a vela setting (did you "
                              "mean vela:nodes?). ")
    assert "declares a cluster of no nodes" not in message


def test_keys_of_other_namespaces_are_left_alone():
    run = run_program(_config(**{"aws:region": "eu-west-1", "pulumi:tags": "{}"}))
    assert len(run.of_type("HostTuning")) == 1


def test_every_known_key_is_in_the_readme_and_every_documented_key_is_known():
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("### Stack config", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"`vela:([A-Za-z]+)`", section))
    assert documented == set(KNOWN_KEYS)


# -- 2. identity stays with the node -----------------------------------------------------------

@pytest.mark.parametrize(("key", "field"), [
    ("vela:hostTuning", "address"), ("vela:hostTuning", "hostKey"), ("vela:hostTuning", "port"),
    ("vela:sriovPool", "pf"), ("vela:sriovPool", "node"), ("vela:sriovPool", "cluster"),
    ("vela:sriovPool", "user"), ("vela:gpuVm", "name"), ("vela:gpuVm", "vfs"),
    ("vela:gpuVm", "hostShare"), ("vela:gpuVm", "numaNodes"), ("vela:gpuVm", "host_key"),
])
def test_pass_through_objects_cannot_set_identity(key, field):
    message = _refused(_config(**{key: {field: "x", "waitTimeout": 60}}))
    assert f"{key}: {field} cannot be set here" in message
    assert f"Remove {field} from {key}" in message


def test_pass_through_objects_keep_their_other_keys():
    run = run_program(_config(**{"vela:gpuVm": {"waitTimeout": 60, "start": False},
                                 "vela:hostTuning": {"mode": "vm", "acs": False},
                                 "vela:sriovPool": {"waitTimeout": 30}}))
    by_name = run.by_name()
    assert by_name["node-0-vm0"].inputs["waitTimeout"] == 60
    assert by_name["node-0-vm0"].inputs["name"] == "node-0-vm0"
    assert by_name["node-0-host"].inputs["address"] == "10.0.0.1"
    assert by_name["node-0-ens1f0"].inputs["pf"] == "ens1f0"


@pytest.mark.parametrize(("first", "second"), [
    ({"address": "10.0.0.1"}, {"address": "10.0.0.1"}),
    ({"address": "10.0.0.1", "port": 22}, {"address": "10.0.0.1"}),  # 22 is the default
    ({"address": "::1"}, {"address": "[0:0::1]"}),  # one IPv6 address, two spellings
    ({"address": "Node.Example"}, {"address": "node.example"}),
])
def test_two_nodes_for_one_host_are_refused(first, second):
    nodes = [{"name": "a", "hostKey": HOST_KEY, **first}, {"name": "b", "hostKey": HOST_KEY,
                                                            **second}]
    message = _refused(_config(**{"vela:nodes": nodes}))
    assert message.startswith("vela:nodes[1] (b): address and port ")
    assert "are already those of vela:nodes[0] (a)" in message


def test_one_address_with_two_ports_is_two_hosts():
    nodes = [{"name": n, "address": "127.0.0.1", "port": p, "hostKey": HOST_KEY}
             for n, p in (("a", 40022), ("b", 40023))]
    assert len(run_program(_config(**{"vela:nodes": nodes})).of_type("HostTuning")) == 2


def _pool_unit(port: str) -> str:
    """The unit file SriovPool itself would write for this PF, from its real inputs model."""
    spec = SriovPoolArgs(address="10.0.0.1", host_key=HOST_KEY, pf=port, num_vfs=1)
    assert paths(spec)["unit"].endswith("/" + unit_name(spec))
    return paths(spec)["unit"]


@pytest.mark.parametrize("ports", [
    ["ens1.f0", "ens1-f0"], ["ens1_f0", "ens1.f0"], ["ENS1F0", "ens1f0"],
    ["0000:3b:00.0", "0000-3b-00-0"],  # a PCI address, and an interface name that reads so
])
def test_two_ports_with_one_pool_name_are_refused(ports):
    # What is refused is what the real names would make of them: the resource name is checked
    # first, then SriovPool's unit file (a PCI address and a name can share only the latter).
    same_name = port_slug(ports[0]) == port_slug(ports[1])
    assert same_name or _pool_unit(ports[0]) == _pool_unit(ports[1])
    clash = "resource name NODE-" if same_name else "unit file "
    named = port_slug(ports[1]) if same_name else _pool_unit(ports[1])
    shape = {"vmsPerNode": 1, "wholeNodes": True, "nicPorts": ports}
    message = _refused(_config(**{"vela:shape": shape}))
    assert f"nicPorts {ports[0]!r} and {ports[1]!r} would give their SriovPools one " \
           f"{clash}{named}," in message
    # A node's overrides cannot make the clash either.
    nodes = lab_like_nodes(2)
    nodes[1]["overrides"] = {"nicPorts": ports}
    message = _refused(_config(**{"vela:nodes": nodes}))
    assert message.startswith("invalid stack config: node node-1: overrides: ")
    assert "would give their SriovPools one" in message


def test_ports_that_pass_get_pools_of_their_own():
    ports = ["ens1f0", "ens1f1", "ens1f0np0", "0000:3b:00.0", "0000:3b:00.1", "eth0.100"]
    shape = {"vmsPerNode": 1, "wholeNodes": True, "nicPorts": ports}
    pools = run_program(_config(**{"vela:shape": shape})).of_type("SriovPool")
    assert len({pool.name for pool in pools}) == len(ports)
    units = {_pool_unit(pool.inputs["pf"]) for pool in pools}
    assert len(units) == len(ports)
    # The check asks SriovPool's own paths(): every file of a pool derives from its PF.
    files = [paths(SimpleNamespace(pf=port)) for port in ports]
    assert len({f["originals"] for f in files}) == len({f["script"] for f in files}) == len(ports)


# -- 3. every config error is a message --------------------------------------------------------

@pytest.mark.parametrize(("text", "words"), [
    ("2.5", "vela:maxRebootingNodes must be a whole number, got 2.5: vela does not round it, "
            "give 2 or 3"),
    ("two", "vela:maxRebootingNodes must be a whole number, got 'two'"),
    ("inf", "must be a whole number, got 'inf'"),
    ("nan", "must be a whole number, got 'nan'"),
    ("1e400", "must be a whole number, got 1e400, which is too large"),
    ("true", "must be a whole number, got 'true'"),
    ("", "must be a whole number, got ''"),
    ("99999999999999999999999", "vela:maxRebootingNodes: Input should be less than or equal"),
    ("0", "vela:maxRebootingNodes: Input should be greater than or equal to 1"),
])
def test_numbers_are_whole_finite_and_in_range(text, words):
    assert words in _refused(_config(**{"vela:maxRebootingNodes": text}))


def test_whole_numbers_written_as_decimals_are_taken():
    run = run_program(_config(**{"vela:maxRebootingNodes": "2.0", "vela:providerShards": "1e0"}))
    assert run.namespace["cluster"].args.max_rebooting_nodes == 2
    assert run.namespace["cluster"].args.provider_shards == 1


@pytest.mark.parametrize(("key", "text", "words"), [
    ("vela:shape", '{"vmsPerNode": 1.5, "wholeNodes": true}',
     "vela:shape.vmsPerNode: Input should be a valid integer, got a number with a fractional"),
    ("vela:shape", '{"vfsPerPort": Infinity, "wholeNodes": true}',
     "vela:shape: Infinity is not a number a setting can have"),
    ("vela:shape", '{"vfsPerPort": NaN, "wholeNodes": true}', "vela:shape: NaN is not a number"),
    ("vela:hostTuning", '{"waitTimeout": 1e400}', "vela:hostTuning: 1e400 is too large"),
    ("vela:gpuVm", f'{{"waitTimeout": {2**60}}}', f"{2**60} is too large"),
    ("vela:shape", '{"vmsPerNode": 1', "vela:shape is not valid JSON (Expecting ',' delimiter"
                                       " at line 1 column 17)"),
    ("vela:nodeOverrides", '{"node-0": "big"}',
     'vela:nodeOverrides.node-0 must be an object of shape fields, such as {"vmsPerNode": 2}; '
     "got a string"),
    ("vela:nodeOverrides", '["node-0"]', "vela:nodeOverrides must map node names to shape "
                                         "fields"),
    ("vela:nodeOverrides", '{"node-0": {"vmsPerNode": 2.5}}',
     "node node-0: overrides: vmsPerNode: Input should be a valid integer, got a number with "
     "a fractional part"),
    ("vela:nodes", '{"name": "a"}', "vela:nodes must be a list of nodes, got an object"),
    ("vela:nodes", "null", "vela:nodes must be a list of nodes, got null"),
    ("vela:nodes", '["node-0"]', "vela:nodes[0] is invalid: entry: Input should be a valid "
                                 "dictionary"),
    ("vela:guest", '{"mtu": "big"}', "vela:guest.mtu: Input should be a valid integer"),
])
def test_every_bad_value_is_a_message(key, text, words):
    message = _refused(_config(**{key: text}))
    assert words in message
    assert "Traceback" not in message


def test_the_largest_exact_integer_is_taken():
    run = run_program(_config(**{"vela:gpuVm": f'{{"waitTimeout": {LARGEST_INTEGER}}}'}))
    assert run.by_name()["node-0-vm0"].inputs["waitTimeout"] == LARGEST_INTEGER


@pytest.mark.parametrize("name", ["Node-1", "node_1", "-node", "n" * 64, "node.1", ""])
def test_node_names_are_explained_in_words(name):
    message = _refused(_config(**{"vela:nodes": [{"name": name, "address": "10.0.0.1",
                                                  "hostKey": HOST_KEY}]}))
    assert message.startswith("vela:nodes[0] is invalid: name: ")
    assert "use 1 to 63 lower-case letters, digits and '-', starting with a letter or digit" \
        in message
    assert "pattern" not in message and "^[" not in message


def test_cluster_names_are_explained_in_words():
    message = _refused(_config(**{"vela:clusterName": "Prod_A"}))
    assert "vela:name: 'Prod_A' is not a valid cluster name: use 1 to 31 lower-case" in message
    assert "pattern" not in message
    # Without vela:clusterName the stack names the cluster: its name must then fit.
    message = _refused(_config(), stack="Prod_A")
    assert message.startswith("the cluster is named after the stack unless vela:clusterName is "
                              "set, and 'Prod_A' is not a valid cluster name")
    run = run_program(_config(**{"vela:clusterName": "prod-a"}), stack="Prod_A")
    assert run.by_name()["node-0-ens1f0"].inputs["cluster"] == "prod-a"


# -- 7. secrets hygiene -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> SimpleNamespace:
    """Real keys from ssh-keygen: plain and encrypted, OpenSSH, PEM and PKCS#8."""
    directory = tmp_path_factory.mktemp("keys")
    made = {}
    for name, key_type, passphrase, extra in [
            ("plain", "ed25519", "", []), ("ed25519", "ed25519", "right phrase", []),
            ("ecdsa", "ecdsa", "right phrase", []), ("rsa", "rsa", "right phrase", []),
            ("pem", "rsa", "right phrase", ["-m", "PEM"]), ("pem_plain", "rsa", "", ["-m", "PEM"]),
            ("pkcs8", "ecdsa", "right phrase", ["-m", "PKCS8"])]:
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, *extra,
                        "-f", str(path)], check=True)
        made[name] = path
    return SimpleNamespace(**made)


def _body(path: Path) -> list[str]:
    """The lines of a private key that are key material (not the armour)."""
    return [line for line in path.read_text().splitlines() if "-----" not in line]


def test_a_private_key_pasted_as_a_host_key_is_not_echoed(keys):
    private = keys.plain.read_text()
    for value in (private, "\n".join(_body(keys.plain))):  # with or without the armour
        nodes = [{"name": "n", "address": "10.0.0.1", "hostKey": value}]
        message = _refused(_config(**{"vela:nodes": nodes}))
        assert "this is a private key, not an SSH public key" in message
        assert "cat /etc/ssh/ssh_host_ed25519_key.pub" in message
        assert not any(line[:12] in message for line in _body(keys.plain))


def test_a_private_key_pasted_into_guest_ssh_keys_is_not_echoed(keys):
    message = _refused(_config(**{"vela:guest": {"sshKeys": [keys.rsa.read_text()]}}))
    assert "vela:guest.sshKeys[0]: this is a private key, not an SSH public key" in message
    assert not any(line[:12] in message for line in _body(keys.rsa))


@pytest.mark.parametrize("value", [
    "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0",  # cut short: paramiko would pad it
    "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "ssh-ed25519 not*base64", "hunter2 hunter3"])
def test_public_key_errors_repeat_no_value(value):
    with pytest.raises(InvalidValue, match="SSH public key") as caught:
        parse_public_key(value)
    words = [word for word in value.split() if not word.startswith(("ssh-", "ecdsa-"))]
    assert not any(word in str(caught.value) for word in words)


def test_real_public_keys_parse(keys):
    for name in ("plain", "ecdsa", "rsa", "pem"):
        line = Path(f"{keys.__dict__[name]}.pub").read_text()
        assert parse_public_key(line).get_base64() == line.split()[1]


@pytest.mark.parametrize("name", ["ed25519", "ecdsa", "rsa", "pem"])
def test_a_wrong_passphrase_is_called_one(keys, name):
    path = keys.__dict__[name]
    assert encrypted_key(path.read_text()) is True
    for key in (KeyFile(str(path), "wrong phrase"), SecretKey(path.read_text(), "wrong phrase")):
        with pytest.raises(Exception, match="wrong passphrase"):
            key.load()
    for key in (KeyFile(str(path)), SecretKey(path.read_text())):
        with pytest.raises(Exception, match="is encrypted: give its passphrase"):
            key.load()
    assert KeyFile(str(path), "right phrase").load()[0].get_name() == \
        SecretKey(path.read_text(), "right phrase").load()[0].get_name()


def test_unencrypted_keys_load_whatever_the_passphrase(keys):
    for path in (keys.plain, keys.pem_plain):
        assert encrypted_key(path.read_text()) is False
        assert KeyFile(str(path), "any").load() and SecretKey(path.read_text(), "any").load()


def test_pkcs8_keys_get_the_conversion_to_run(keys):
    for key in (KeyFile(str(keys.pkcs8), "right phrase"),
                SecretKey(keys.pkcs8.read_text(), "right phrase")):
        with pytest.raises(Exception, match="PKCS#8 format.*ssh-keygen -p -f KEYFILE"):
            key.load()


def test_the_program_reads_the_key_at_preview(keys):
    text = keys.ed25519.read_text()
    secret = ("vela:sshPrivateKey", "vela:sshPrivateKeyPassphrase")
    message = _refused(_config(**{"vela:sshPrivateKey": text}))
    assert message.startswith("vela:sshPrivateKey: the secret SSH key is encrypted: give its "
                              "passphrase with `pulumi config set --secret "
                              "vela:sshPrivateKeyPassphrase`")
    message = _refused(_config(**{"vela:sshPrivateKey": text,
                                  "vela:sshPrivateKeyPassphrase": "wrong phrase"}),
                       secret_keys=secret)
    assert message.startswith("vela:sshPrivateKey: wrong passphrase for the secret SSH key")
    run = run_program(_config(**{"vela:sshPrivateKey": text,
                                 "vela:sshPrivateKeyPassphrase": "right phrase"}),
                      secret_keys=secret)
    assert len(run.of_type("GpuVm")) == 1
    public = Path(f"{keys.plain}.pub").read_text()
    message = _refused(_config(**{"vela:sshPrivateKey": public}))
    assert "vela:sshPrivateKey: the secret SSH key is not a private key" in message
    assert public.split()[1] not in message


def test_a_key_that_is_not_a_secret_is_warned_about_at_preview(caplog, tmp_path):
    keygen(tmp_path / "id")
    config = _config(**{"vela:sshPrivateKey": (tmp_path / "id").read_text()})
    with caplog.at_level(logging.WARNING):
        run_program(config, secret_keys=())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("vela:sshPrivateKey is not a secret: it is stored in plain text in "
                            "the stack file (Pulumi.dev.yaml)") and
               "`pulumi config set --secret vela:sshPrivateKey < ~/.ssh/id_ed25519`" in w
               for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_program(config)
    assert not [r for r in caplog.records if "is not a secret" in r.getMessage()]
