"""Topology pictures: what the picture model and its DOT text hold for the published layouts.

Facts come from the fake hosts of tests/support (HGX A100, IBM's Vela sample) and the recorded
lab host, read through the real facts layer; pairs and ACS from HostTuning's own selection;
guests from GpuVm's placement and domain XML.
"""

from __future__ import annotations

import shutil

import pytest

from providers.gpu_vm.placement import place
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.xml.domain import domain, render
from providers.gpu_vm.xml.spec import DomainSpec
from providers.host_tuning.observe import Observations
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import desired_target, select_topology
from tests.support.layouts import amd_epyc_host
from tests.support.recorded import RECORDED
from tests.unit.conftest import gathered
from topology.__main__ import build, main, read_facts
from topology.domain import DomainReadError, guest_layout
from topology.model import Cluster, GuestLayout, Picture, picture
from topology.render import dot

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
LAB_FACTS = RECORDED / "gather" / "lab-host-q35-switch.txt"
LAB_SELECTORS = {"gpu_selector": ["1af4:1110"], "nic_selector": ["8086:10c9"]}


def _tuning(**values) -> HostTuningArgs:
    return HostTuningArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY, **values})


def _vm(**values) -> GpuVmArgs:
    return GpuVmArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY, "name": "vm",
                                     "image": {"path": "/base.qcow2"}, "vcpus": 8,
                                     "memoryGib": 16, **values})


def _switches(drawn: Picture, kind: str = "switch") -> list[Cluster]:
    return [cluster for cluster in drawn.clusters() if cluster.kind == kind]


def _kinds(cluster: Cluster) -> list[str]:
    return sorted(node.kind for inner in cluster.walk() for node in inner.nodes
                  if node.kind in {"gpu", "nic", "nvswitch", "vf"})


def _owner(drawn: Picture, node_id: str, kind: str) -> Cluster:
    """The innermost cluster of `kind` holding the node."""
    found = [cluster for cluster in drawn.clusters() if cluster.kind == kind
             and node_id in {node.id for inner in cluster.walk() for node in inner.nodes}]
    return found[-1]


def _host_pairs(drawn: Picture) -> list[tuple[str, str]]:
    return [(edge.tail, edge.head) for edge in drawn.edges
            if edge.kind == "pair" and edge.tail.startswith("h:")]


# -- the HGX A100 host -----------------------------------------------------------------------

def test_hgx_has_four_gpu_switches_of_two_gpus_and_their_nic_each(hgx_facts):
    facts, layout = hgx_facts
    drawn = picture(facts, select_topology(_tuning(), facts))
    switches = _switches(drawn)
    by_upstream = {cluster.id.removeprefix("switch:"): cluster for cluster in switches}
    for group in layout.switches:
        cluster = by_upstream[group.upstream]
        assert _kinds(cluster) == ["gpu", "gpu", "nic"]
        nic = next(node for node in cluster.nodes if node.kind == "nic")
        assert nic.addresses == group.nic_pfs  # both ports of the NIC, one node
        numa = _owner(drawn, nic.id, "numa")
        assert numa.id == f"numa:{group.numa_node}"
    # The fifth switch holds the NVSwitches; the chipset's devices are one summary node.
    others = [cluster for cluster in switches if cluster.id.removeprefix("switch:")
              not in {group.upstream for group in layout.switches}]
    assert [_kinds(cluster) for cluster in others] == [["nvswitch"] * len(layout.nvswitches)]
    summary = drawn.node("h:pci0000:00:others")
    assert set(summary.addresses) == {layout.bmc_vga, *layout.mgmt_nic}
    assert len({cluster.tone for cluster in switches}) == len(switches)


def test_hgx_pair_edges_join_each_gpu_to_the_nic_of_its_switch(hgx_facts):
    facts, layout = hgx_facts
    topology = select_topology(_tuning(), facts)
    drawn = picture(facts, topology)
    pairs = _host_pairs(drawn)
    assert len(pairs) == len(layout.gpus) == len(topology.pairs)
    for group in layout.switches:
        for gpu in group.gpus:
            assert (f"h:{gpu.rsplit('.', 1)[0]}", f"h:{group.nic_pfs[0].rsplit('.', 1)[0]}") \
                in pairs
    # 4 NICs at the other end, one per GPU switch.
    assert len({head for _, head in pairs}) == len(layout.switches)


def test_hgx_acs_marks_are_the_bridges_hosttuning_writes(hgx_facts):
    facts, _ = hgx_facts
    spec = _tuning()
    topology = select_topology(spec, facts)
    written = {register.address for register in desired_target(
        spec, facts, Observations(), topology).registers.values()
        if register.what == "ACS control"}
    drawn = picture(facts, topology)
    marked = {node.addresses[0] for node in drawn.nodes() if "acs" in node.marks}
    assert marked == written and len(written) == 3 * 4  # two GPU ports and a NIC port a switch
    on_path = {node.addresses[0] for node in drawn.nodes() if "path" in node.marks}
    assert all(not (facts.pci[bridge].caps and facts.pci[bridge].caps.acs) for bridge in on_path)
    off = picture(facts, topology, acs=False)
    assert not [node for node in off.nodes() if "acs" in node.marks]
    assert {node.addresses[0] for node in off.nodes() if "path" in node.marks} == \
        marked | on_path


# -- IBM's sample: two switches without a NIC ------------------------------------------------

def test_ibm_sample_has_two_switches_without_a_nic_and_pairs_only_in_the_others(ibm_facts):
    facts, layout = ibm_facts
    drawn = picture(facts, select_topology(_tuning(), facts))
    by_upstream = {cluster.id.removeprefix("switch:"): cluster for cluster in _switches(drawn)}
    for label, group in layout.labels.items():
        has_nic = bool(group.nic_pfs)
        assert _kinds(by_upstream[group.upstream]) == ["gpu", "gpu"] + ["nic"] * has_nic, label
    paired = {tail for tail, _ in _host_pairs(drawn)}
    assert paired == {f"h:{gpu.rsplit('.', 1)[0]}" for label in ("dd", "b5")
                      for gpu in layout.labels[label].gpus}


def test_a_host_without_switches_has_no_pairs_and_no_switch_in_its_legend(tmp_path_factory):
    """The ASUS EPYC server: GPUs and NICs straight on root ports. HostTuning pairs nothing
    (no shared switch), so the picture has no pair edge and no switch."""
    facts, _ = gathered(amd_epyc_host(), tmp_path_factory)
    drawn = picture(facts, select_topology(_tuning(), facts))
    assert {"gpu", "nic"} <= drawn.kinds()
    assert not _switches(drawn) and not _host_pairs(drawn)
    assert "PCIe switch (one fill" not in dot(drawn)


# -- a guest beside its host -----------------------------------------------------------------

def _whole_node_guest(facts, layout):
    vfs = [{"address": facts.device(group.nic_pfs[0]).virtfns[0].address}
           for group in layout.switches]
    return place(_vm(gpus=len(layout.gpus), vfs=vfs), facts, {})


def test_a_placed_guest_mirrors_each_host_switch_beside_it(hgx_facts):
    facts, layout = hgx_facts
    placed = _whole_node_guest(facts, layout)
    drawn = picture(facts, select_topology(_tuning(), facts), [GuestLayout(name="vm",
                                                                            layout=placed)])
    assert [guest.lines[0] for guest in drawn.guests] == ["guest vm"]
    host_tones = {cluster.id.removeprefix("switch:"): cluster.tone
                  for cluster in _switches(drawn)}
    mirrors = _switches(drawn, "guest_switch")
    assert len(mirrors) == len(host_tones)  # the 4 GPU switches and the NVSwitches' one
    for group in layout.switches:
        mirror = next(cluster for cluster in mirrors if f"mirrors {group.upstream}"
                      in cluster.lines)
        assert mirror.tone == host_tones[group.upstream]
        assert _kinds(mirror) == ["gpu", "gpu", "vf"]
        vf = next(node for node in mirror.nodes if node.kind == "vf")
        assert vf.marks == ["gpudirect"]
    passthrough = {(edge.tail, edge.head) for edge in drawn.edges if edge.kind == "passthrough"}
    for device in placed.devices:
        host = facts.pci[device.host_address].physfn or device.host_address
        assert (f"h:{host.rsplit('.', 1)[0]}", f"g0:{device.host_address}") in passthrough
    guest_pairs = [edge for edge in drawn.edges if edge.kind == "pair"
                   and edge.tail.startswith("g0:")]
    assert len(guest_pairs) == len(layout.gpus)
    assert all(edge.mirrored for edge in drawn.edges
               if edge.kind == "tree" and edge.tail.startswith("g0:"))


def test_a_guest_without_a_gpu_on_its_nics_switch_pairs_through_the_cpu(ibm_facts):
    facts, layout = ibm_facts
    vf = facts.device(layout.labels["dd"].nic_pfs[0]).virtfns[0].address
    placed = place(_vm(gpus=layout.labels["c9"].gpus, vfs=[{"address": vf}]), facts, {})
    drawn = picture(facts, select_topology(_tuning(), facts), [GuestLayout(name="vm",
                                                                            layout=placed)])
    kinds = {edge.kind for edge in drawn.edges if edge.tail.startswith("g0:")}
    assert "pair_cpu" in kinds and "pair" not in kinds
    assert drawn.node(f"g0:{vf}").marks == []


def _tree(layout) -> list:
    """What a picture draws of a guest's PCIe tree (which GPU a VF pairs with is not in the
    XML: the picture takes each GPU's NIC from `gpu_nic_pairs`)."""
    return [(complex_.host_root_complex, complex_.cell, complex_.bus_nr,
             [(port.switch, port.host_upstream,
               [(device.host_address, device.kind, device.guest_address, device.gpudirect)
                for device in port.devices]) for port in complex_.ports])
            for complex_ in layout.complexes]


def test_domain_xml_reads_back_as_the_layout_it_was_made_from(hgx_facts):
    facts, layout = hgx_facts
    placed = _whole_node_guest(facts, layout)
    spec = DomainSpec(name="vm0", domain_type="kvm", cpu_model="host-passthrough",
                      phys_bits_mode="passthrough", hugepage_kib=1048576, firmware="efi")
    read = guest_layout(render(domain(spec, placed)), facts)
    assert read.name == "vm0"
    assert _tree(read.layout) == _tree(placed)
    assert read.layout.cells == placed.cells
    assert read.layout.memory_kib == placed.memory_kib and read.layout.nvlink is True
    with pytest.raises(DomainReadError, match="does not parse"):
        guest_layout("<domain", facts)


# -- DOT -------------------------------------------------------------------------------------

def test_dot_draws_clusters_pairs_marks_and_only_the_legend_it_needs(hgx_facts):
    facts, layout = hgx_facts
    text = dot(picture(facts, select_topology(_tuning(), facts)))
    assert text.startswith("digraph topology {") and text.endswith("}\n")
    assert text.count('subgraph "cluster_switch:') == len(layout.switches) + 1
    assert text.count('subgraph "cluster_numa:') == 2
    assert text.count('penwidth="3" constraint="false"') == len(layout.gpus)
    assert text.count("ACS set") == 3 * len(layout.switches) + 1  # and the legend's
    assert 'shape="box3d"' in text and 'shape="component"' in text
    assert "passed through" not in text  # no guest: no passthrough in the legend
    quoted = dot(Picture(title='a "quoted" \\ title', host=Cluster(id="host", kind="host",
                                                                    lines=["h"])))
    assert 'label="a \\"quoted\\" \\\\ title"' in quoted


def test_mirrored_guest_edges_run_from_device_back_to_root(hgx_facts):
    facts, layout = hgx_facts
    placed = _whole_node_guest(facts, layout)
    text = dot(picture(facts, select_topology(_tuning(), facts),
                       [GuestLayout(name="vm", layout=placed)]))
    gpu = layout.switches[0].gpus[0]
    assert f'"g0:{gpu}" -> "g0:down:{gpu}";' in text
    assert f'"g0:down:{gpu}" -> "g0:{gpu}"' not in text


# -- the recorded lab host and the command ----------------------------------------------------

def test_recorded_lab_host_pairs_under_its_two_switches_with_no_acs_to_set():
    facts = read_facts(LAB_FACTS.read_text())
    drawn = build(facts, [], LAB_SELECTORS["gpu_selector"], LAB_SELECTORS["nic_selector"],
                  acs=True)
    switches = _switches(drawn)
    assert [_kinds(cluster) for cluster in switches] == [["gpu", "nic"]] * 2
    assert len(_host_pairs(drawn)) == 2
    # QEMU's switch ports have no ACS capability: the pairs' bridges can only be shown.
    assert not [node for node in drawn.nodes() if "acs" in node.marks]
    assert len([node for node in drawn.nodes() if "path" in node.marks]) == 6


def test_command_writes_dot_and_says_when_graphviz_is_missing(tmp_path, monkeypatch, capsys):
    arguments = ["--facts", str(LAB_FACTS), "--out", str(tmp_path), "--name", "lab",
                 "--gpu", "1af4:1110", "--nic", "8086:10c9"]
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(arguments) == 2
    assert "Graphviz's `dot` is not installed" in capsys.readouterr().err
    assert (tmp_path / "lab.dot").read_text().startswith("digraph topology {")
    assert main(["--facts", str(tmp_path / "lab.dot"), "--out", str(tmp_path)]) == 2
    assert "not a facts file" in capsys.readouterr().err
    assert main([*arguments, "--gpu", "nonsense"]) == 2
    assert "not a known device" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_command_draws_svg_and_png(tmp_path):
    assert main(["--facts", str(LAB_FACTS), "--out", str(tmp_path), "--gpu", "1af4:1110",
                 "--nic", "8086:10c9", "--no-acs"]) == 0
    assert (tmp_path / "lab-0.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "lab-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
