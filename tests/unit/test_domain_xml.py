"""A libvirt domain whose XML does not parse is an error, not a domain that holds nothing: a
VF count change planned without it could remove VFs from under a running guest. A domain
undefined between `virsh list` and its `virsh dumpxml` (empty XML) holds nothing."""

from __future__ import annotations

import pytest

from providers.errors import DomainXmlError
from providers.facts import parse_gather_output
from providers.facts.models import VirtualFunction
from providers.sriov_pool.bootunit import vf_address
from providers.sriov_pool.observe import PoolObservations, domains_using
from providers.sriov_pool.plan import plan
from providers.sriov_pool.spec import SriovPoolArgs
from providers.sriov_pool.target import desired_target
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
PF = "0000:44:00.0"
UUID = "6f1c2b7e-0c4e-4d0a-9a51-2f0e7d3c1a90"


def test_unparsable_domain_xml_stops_the_pool_plan_naming_the_domain():
    facts = parse_gather_output(recorded("gather/lab-host-q35-switch.txt"))
    pf = facts.device(PF)
    pf.sriov_numvfs = 3
    pf.virtfns = [VirtualFunction(index=i, address=vf_address(pf, i)) for i in range(3)]
    xml = recorded("libvirt/domain-vf-hostdev-and-interface.xml.txt")
    observed = PoolObservations(pf=PF, netdev="enp68s0", autoprobe="0",
                                domains={UUID: xml[: len(xml) // 2]})
    spec = SriovPoolArgs.model_validate({"address": "10.0.0.7", "hostKey": HOST_KEY,
                                         "pf": "enp68s0", "numVfs": 2})
    target = desired_target(spec, facts, observed, pf)
    with pytest.raises(DomainXmlError) as caught:
        plan(spec, target, facts, observed, pf)
    message = str(caught.value)
    assert message.startswith(f"libvirt domain {UUID}: its XML (`virsh dumpxml {UUID}`) does "
                              f"not parse (")
    assert "which devices it holds is unknown" in message and "run `pulumi up` again" in message


def test_a_domain_gone_before_its_dumpxml_holds_nothing():
    assert domains_using({UUID: ""}, {"0000:44:10.0"}, None) == {}
