"""`python -m topology --stack`: a deployed stack's outputs and config -> the nodes to draw, the
key that logs in, each node's guests (from the outputs, else `virsh dumpxml` on the host), and
the command's messages and exit status. Over a real sshd: tests/integration/test_topology_over_ssh.
"""

from __future__ import annotations

import json
import shutil

import pytest

from components.deployed import Deployed, stack_nodes
from providers.errors import HostUnreachable
from providers.host import KeyFile, LocalHost, SecretKey
from providers.host.base import CommandResult
from tests.support.hgx import hgx_a100
from tests.support.sshd import keygen
from topology.__main__ import main
from topology.stack import DEFAULT_KEY, StackNode, client_key, gather, stack_nodes_to_draw

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
GUEST = "<domain type='kvm'><name>{name}</name></domain>"


def _node(name: str, address: str, **more) -> dict:
    return {"name": name, "address": address, "hostKey": HOST_KEY, **more}


def _config(**values) -> dict[str, str]:
    return {f"vela:{key}": value if isinstance(value, str) else json.dumps(value)
            for key, value in values.items()}


# -- the pure part: outputs and config -> nodes --------------------------------------------------

def test_each_node_has_its_own_guests_address_and_pinned_key():
    # "a" and "a-vm0" are both valid node names: a-vm0-vm0 is the second's guest, not the first's.
    config = _config(nodes=[_node("a", "192.0.2.10"),
                            _node("a-vm0", "192.0.2.11", port=2222, user="ops")])
    outputs = {"vmAddresses": {"a-vm0": ["10.1.0.5"], "a-vm1": [], "a-vm0-vm0": ["10.1.0.6"]},
               "domainXml": {"a-vm0": GUEST.format(name="a-vm0")}}
    first, second = stack_nodes_to_draw("dev", outputs, config)
    assert (first.name, first.address, first.port, first.user, first.host_key) == (
        "a", "192.0.2.10", 22, "root", HOST_KEY)
    assert first.guests == {"a-vm0": GUEST.format(name="a-vm0"), "a-vm1": None}
    assert first.where == "a (192.0.2.10:22)"
    assert (second.address, second.port, second.user) == ("192.0.2.11", 2222, "ops")
    assert second.guests == {"a-vm0-vm0": None}  # not exported: read on the host


def test_selectors_and_acs_are_the_stacks_own_per_node():
    config = _config(nodes=[_node("n0", "192.0.2.10"),
                            _node("n1", "192.0.2.11", overrides={"gpuSelector": ["10de:2330"]}),
                            _node("n2", "192.0.2.12")],
                     shape={"gpuSelector": ["1af4:1110"], "nicSelector": ["8086:10c9"]},
                     nodeOverrides={"n2": {"nicSelector": ["connectx"]}},
                     hostTuning={"acs": False})
    nodes = stack_nodes_to_draw("dev", {"vmAddresses": {}}, config)
    assert [(node.gpu, node.nic, node.acs, node.guests) for node in nodes] == [
        (["1af4:1110"], ["8086:10c9"], False, {}),
        (["10de:2330"], ["8086:10c9"], False, {}),
        (["1af4:1110"], ["connectx"], False, {})]
    default = stack_nodes_to_draw("dev", {"vmAddresses": {}},
                                  _config(nodes=[_node("n0", "192.0.2.10")]))[0]
    assert (default.gpu, default.nic, default.acs) == (None, None, True)  # HostTuning's defaults


def test_the_labs_nodes_come_from_its_inventory_file(tmp_path):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"hosts": [_node("lab-0", "127.0.0.1", port=2201)]}))
    config = _config(inventoryFile=str(inventory))
    (node,) = stack_nodes_to_draw("dev", {"vmAddresses": {"lab-0-vm0": ["10.0.2.15"]}},
                                  config)
    assert (node.name, node.port, node.host_key, node.guests) == (
        "lab-0", 2201, HOST_KEY, {"lab-0-vm0": None})
    assert [n.name for n in stack_nodes(config)] == ["lab-0"]  # what acceptance reads too


def test_a_stack_not_deployed_or_without_nodes_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"not deployed: deploy it first \(`scripts/up`\)"):
        stack_nodes_to_draw("dev", {}, _config(nodes=[_node("n0", "192.0.2.10")]))
    with pytest.raises(ValueError, match="names no nodes"):
        stack_nodes_to_draw("dev", {"vmAddresses": {}}, {})
    with pytest.raises(ValueError, match="vela:nodes in the stack config is not JSON"):
        stack_nodes_to_draw("dev", {"vmAddresses": {}}, {"vela:nodes": "[{"})
    with pytest.raises(ValueError, match="does not exist"):
        stack_nodes_to_draw("dev", {"vmAddresses": {}},
                            _config(inventoryFile=str(tmp_path / "none.json")))
    with pytest.raises(ValueError, match=r"vela:nodes\[0\]"):
        stack_nodes_to_draw("dev", {"vmAddresses": {}}, _config(nodes=[{"name": "n0"}]))


def test_the_key_is_the_given_file_else_the_stacks_else_the_default(tmp_path):
    keygen(tmp_path / "id")
    text = (tmp_path / "id").read_text()
    stack = {"vela:sshPrivateKey": text}
    given = client_key(str(tmp_path / "id"), stack)
    assert isinstance(given, KeyFile) and given.path == str(tmp_path / "id")
    assert isinstance(client_key(None, stack), SecretKey)  # what the providers log in with
    fallback = client_key(None, {})
    assert isinstance(fallback, KeyFile) and fallback.path.endswith(DEFAULT_KEY[1:])


# -- gathering a node: facts, and guests the stack does not export ----------------------------

class VirshHost(LocalHost):
    """A fake host tree whose `virsh dumpxml` knows the given domains."""

    def __init__(self, root: str, domains: dict[str, str]) -> None:
        super().__init__(root, name="n0 (192.0.2.10:22)")
        self.domains = domains
        self.asked: list[str] = []

    def _execute(self, command, stdin, deadline):
        if "virsh" not in command:
            return super()._execute(command, stdin, deadline)
        name = command.split()[-1].strip("'")
        self.asked.append(name)
        if name in self.domains:
            return CommandResult(command, 0, self.domains[name].encode(), b"")
        return CommandResult(command, 1, b"", f"error: failed to get domain '{name}'\n".encode())


@pytest.fixture(scope="module")
def hgx_root(tmp_path_factory):
    host, _ = hgx_a100(nic_vfs=2)
    return str(host.write(tmp_path_factory.mktemp("hgx")))


def test_guests_not_exported_are_dumped_on_the_host_and_a_missing_one_is_named(hgx_root):
    node = StackNode(name="n0", address="192.0.2.10", port=22, user="root", host_key=HOST_KEY,
                     guests={"n0-vm0": GUEST.format(name="n0-vm0"), "n0-vm1": None,
                             "n0-vm2": None})
    host = VirshHost(hgx_root, {"n0-vm1": GUEST.format(name="n0-vm1")})
    found = gather(node, host)
    assert found.facts.hostname == "hgx-a100-01"
    assert host.asked == ["n0-vm1", "n0-vm2"]  # n0-vm0's XML came with the outputs
    assert found.guests == [GUEST.format(name="n0-vm0"), GUEST.format(name="n0-vm1")]
    (problem,) = found.problems
    assert problem.startswith("n0 (192.0.2.10:22): guest n0-vm2 not drawn: `virsh dumpxml "
                              "n0-vm2` failed there (error: failed to get domain 'n0-vm2')")
    assert "virsh list --all" in problem


# -- the command ---------------------------------------------------------------------------------

def _stack(config: dict[str, str], outputs: dict | None = None):
    found = {"vmAddresses": {}} if outputs is None else outputs
    return lambda name: Deployed(name=name, outputs=found, config=config)


def test_a_stack_that_cannot_be_drawn_is_a_message_and_status_2(tmp_path, capsys):
    def unreadable(name):
        raise ValueError(f"no stack {name} in the backend file:///nowhere: deploy it")

    assert main(["--stack", "prod", "--out", str(tmp_path)], read=unreadable) == 2
    assert capsys.readouterr().err == ("topology: no stack prod in the backend file:///nowhere: "
                                       "deploy it\n")
    nodes = _config(nodes=[_node("n0", "192.0.2.10")])
    assert main(["--stack", "dev", "--out", str(tmp_path)], read=_stack(nodes, {})) == 2
    assert "is not deployed" in capsys.readouterr().err
    assert main(["--stack", "dev", "--out", str(tmp_path), "--key", str(tmp_path / "none")],
                read=_stack(nodes)) == 2
    err = capsys.readouterr().err
    assert "does not exist: give the key that logs in to the stack's hosts with --key" in err
    with pytest.raises(SystemExit):
        main(["--stack", "dev", "--out", str(tmp_path), "--name", "x"], read=_stack(nodes))
    assert "--guest-xml and --name go with --facts" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_an_unreachable_host_is_named_and_the_others_still_drawn(tmp_path, capsys, hgx_root):
    keygen(tmp_path / "id")
    config = _config(nodes=[_node("down", "192.0.2.10"), _node("up", "192.0.2.11")])

    def connect(node, key):
        if node.name == "down":
            raise HostUnreachable(node.where, "cannot reach 192.0.2.10:22: Connection refused. "
                                              "Check the address and port")
        return VirshHost(hgx_root, {})

    outputs = {"vmAddresses": {"up-vm0": []}}
    status = main(["--stack", "dev", "--out", str(tmp_path / "out"), "--key",
                   str(tmp_path / "id")], read=_stack(config, outputs), connect=connect)
    assert status == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("topology: down (192.0.2.10:22): cannot reach 192.0.2.10:22: Connection "
                      "refused. Check the address and port")
    assert err[1].startswith("topology: up (192.0.2.11:22): guest up-vm0 not drawn")
    assert err[-1] == ("topology: stack dev: 1 of 2 nodes not drawn (down); drawn without some "
                       "guests: up; the messages above say why and what to do")
    assert (tmp_path / "out" / "up.dot").read_text().startswith("digraph topology {")
    assert not (tmp_path / "out" / "down.dot").exists()
