"""`python -m topology --stack` end to end over a real sshd on loopback serving the HGX A100
fake host tree: the stack reader is stubbed (outputs and config as the Automation API returns
them); the host is reached as the providers reach it (its pinned host key, the given key), its
facts gathered over SSH, its guest's exported domain XML drawn beside it. A second node that
does not answer is named, and the first is drawn all the same."""

from __future__ import annotations

import functools
import json
import shutil

import pytest

from components.deployed import Deployed
from providers.facts import gather_facts
from providers.gpu_vm.placement import place
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.xml.domain import domain, render
from providers.gpu_vm.xml.spec import DomainSpec
from providers.host import LocalHost
from tests.support.sshd import free_port
from topology.__main__ import main
from topology.stack import connect

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


def _whole_node_guest_xml(facts, layout, host_key: str) -> str:
    """What GpuVm would export as domainXml for a guest taking the whole node."""
    vfs = [{"address": facts.device(group.nic_pfs[0]).virtfns[0].address}
           for group in layout.switches]
    spec = GpuVmArgs.model_validate({"address": "127.0.0.1", "hostKey": host_key,
                                     "name": "hgx-01-vm0", "image": {"path": "/base.qcow2"},
                                     "vcpus": 8, "memoryGib": 16, "gpus": len(layout.gpus),
                                     "vfs": vfs})
    return render(domain(DomainSpec(name="hgx-01-vm0", domain_type="kvm",
                                    cpu_model="host-passthrough", phys_bits_mode="passthrough",
                                    hugepage_kib=1048576, firmware="efi"),
                         place(spec, facts, {})))


def test_stack_draws_each_node_over_ssh_and_names_the_one_that_does_not_answer(
        sshd, hgx, tmp_path, capsys):
    root, layout = hgx
    xml = _whole_node_guest_xml(gather_facts(LocalHost(str(root))), layout, sshd.host_key)
    silent = free_port()  # nothing listens there
    nodes = [{"name": "hgx-01", "address": "127.0.0.1", "port": sshd.port, "user": sshd.user,
              "hostKey": sshd.host_key},
             {"name": "gone", "address": "127.0.0.1", "port": silent, "hostKey": sshd.host_key}]
    deployed = Deployed(name="dev", config={"vela:nodes": json.dumps(nodes)},
                        outputs={"vmAddresses": {"hgx-01-vm0": ["10.0.0.9"], "gone-vm0": []},
                                 "domainXml": {"hgx-01-vm0": xml}})
    out = tmp_path / "out"
    sessions = sshd.sessions()
    status = main(["--stack", "dev", "--out", str(out), "--key", str(sshd.client_key_path)],
                  read=lambda name: deployed,
                  connect=functools.partial(connect, sysroot=str(root)))
    err = capsys.readouterr().err
    assert status == 1
    assert f"topology: gone (127.0.0.1:{silent}): cannot reach 127.0.0.1:{silent}" in err
    assert "1 of 2 nodes not drawn (gone)" in err
    assert sshd.sessions() - sessions == 1  # the facts in one command; the XML came exported
    text = (out / "hgx-01.dot").read_text()
    for group in layout.switches:  # every GPU switch of the host, and its guest mirror
        assert f'subgraph "cluster_switch:{group.upstream}"' in text
        assert f"mirrors {group.upstream}" in text
    assert "guest hgx-01-vm0" in text
    assert (out / "hgx-01.svg").read_text().lstrip().startswith("<?xml")
    assert (out / "hgx-01.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("gone.*"))
