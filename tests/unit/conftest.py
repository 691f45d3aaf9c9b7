"""Fixtures shared by the unit tests: published layouts read through the real facts layer."""

from __future__ import annotations

import pytest

from providers.facts import gather_facts
from providers.host import LocalHost
from tests.support.hgx import hgx_a100
from tests.support.layouts import ibm_hgx_a100


def gathered(built, tmp_path_factory):
    """(facts, layout) of a fake host (`built`: a layout builder's result), written to a fresh
    directory and read as a real host's would be."""
    host, layout = built
    return gather_facts(LocalHost(str(host.write(tmp_path_factory.mktemp("host"))))), layout


@pytest.fixture(scope="module")
def hgx_facts(tmp_path_factory):
    """The HGX A100 fixture with 2 VFs per NIC and 64 free 1 GiB pages per node."""
    return gathered(hgx_a100(nic_vfs=2, hugepages_1g_per_node=64), tmp_path_factory)


@pytest.fixture(scope="module")
def ibm_facts(tmp_path_factory):
    """IBM's Vela HGX sample: NICs under two of the four switches, 2 VFs per NIC."""
    return gathered(ibm_hgx_a100(nic_vfs=2), tmp_path_factory)
