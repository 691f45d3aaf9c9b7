"""GpuVm placement on the published layouts: NVSwitches with a whole-node guest, GPU-NIC pairs
that match the host's switches, a VM per socket, and vCPUs that never share a CPU.

Facts come from the fake hosts of tests/support (HGX A100, IBM's Vela HGX sample, a DGX
A100-like node) read through the real facts layer.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from providers.gpu_vm.placement import PlacementError, gpu_nic_pairs, place
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.target import cpu_list, locality_notes
from tests.support.layouts import dgx_a100
from tests.unit.conftest import gathered

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture(scope="module")
def dgx(tmp_path_factory):
    return gathered(dgx_a100(nic_vfs=1), tmp_path_factory)


def _spec(**values) -> GpuVmArgs:
    return GpuVmArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY, "name": "vm",
                                     "image": {"path": "/base.qcow2"}, "vcpus": 4,
                                     "memoryGib": 8, **values})


def _vfs(facts, pfs, per_pf: int = 1) -> list[dict]:
    return [{"address": vf.address} for pf in pfs for vf in facts.device(pf).virtfns[:per_pf]]


def _port_of(layout, address):
    for complex_ in layout.complexes:
        for port in complex_.ports:
            if address in {device.host_address for device in port.devices}:
                return complex_, port
    raise AssertionError(f"{address} not placed")


# -- NVSwitch nodes --------------------------------------------------------------------------

def test_a_guest_with_some_gpus_of_an_nvswitch_node_is_refused_unless_allowed(hgx_facts):
    facts, layout = hgx_facts
    with pytest.raises(PlacementError, match=r"6 NVSwitches.*all 8 GPUs; with 4 it has no "
                                             r"NVLink.*allowNoNvlink: true"):
        place(_spec(gpus=4), facts, {})
    partial = place(_spec(gpus=4, allowNoNvlink=True), facts, {})
    assert partial.nvlink is False
    assert not [d for d in partial.devices if d.kind == "nvswitch"]
    assert locality_notes(partial) == ["NVLink: no, 4 GPU(s) of an NVSwitch node"]
    whole = place(_spec(gpus=8), facts, {})
    assert locality_notes(whole)[0] == "NVLink: yes, every GPU and NVSwitch"


def test_nvswitches_held_elsewhere_stop_a_whole_node_guest(hgx_facts):
    facts, layout = hgx_facts
    with pytest.raises(PlacementError, match="NVSwitches are held by domain"):
        place(_spec(gpus=8), facts, {layout.nvswitches[0]: "old-vm"})


def test_a_host_without_nvswitches_says_nothing_of_nvlink(ibm_facts):
    facts, _ = ibm_facts
    assert place(_spec(gpus=2), facts, {}).nvlink is None


# -- GPU-NIC pairs ---------------------------------------------------------------------------

def test_ibm_sample_nics_pair_only_under_their_own_switch(ibm_facts):
    """IBM's sample: NICs under dd and b5 only. Their VFs sit under those switches with the
    GPUs there; the GPUs of c9 and a1 reach a NIC only through the CPU, and say so."""
    facts, layout = ibm_facts
    vfs = _vfs(facts, [layout.labels["dd"].nic_pfs[0], layout.labels["b5"].nic_pfs[0]])
    placed = place(_spec(gpus=8, vcpus=8, memoryGib=16, vfs=vfs), facts, {})
    for label in ("dd", "b5"):
        group = layout.labels[label]
        vf = facts.device(group.nic_pfs[0]).virtfns[0].address
        _, port = _port_of(placed, vf)
        assert port.switch and port.host_upstream == group.upstream
        assert {d.host_address for d in port.devices} == set(group.gpus) | {vf}
    pairs = {pair["gpu"]: pair for pair in gpu_nic_pairs(placed)}
    for label, local in (("c9", False), ("dd", True), ("b5", True), ("a1", False)):
        for gpu in layout.labels[label].gpus:
            assert pairs[gpu]["gpudirect"] is local
            assert pairs[gpu]["path"] == ("one PCIe switch" if local else
                                          "through the CPU (same NUMA node)")
            nic = facts.device(pairs[gpu]["nic"])
            assert nic.numa_node == facts.device(gpu).numa_node
    assert locality_notes(placed) == ["GPUDirect: 4 of 8 GPU(s) share a PCIe switch with a NIC"]


def test_a_vf_without_a_gpu_of_its_switch_gets_its_own_root_port(ibm_facts):
    """The guest takes c9's GPUs and a VF of the NIC under dd: no shared switch, so the VF is
    on a root port of its own on the same NUMA node's expander, not under c9's mirror."""
    facts, layout = ibm_facts
    vf = facts.device(layout.labels["dd"].nic_pfs[0]).virtfns[0].address
    placed = place(_spec(gpus=layout.labels["c9"].gpus, vfs=[{"address": vf}]), facts, {})
    complex_, port = _port_of(placed, vf)
    assert not port.switch and [d.host_address for d in port.devices] == [vf]
    assert complex_.cell == placed.cells[0].id and placed.cells[0].host_node == 0
    device = next(d for d in placed.devices if d.host_address == vf)
    assert device.paired_with is None and device.gpudirect is False
    _, gpu_port = _port_of(placed, layout.labels["c9"].gpus[0])
    assert vf not in {d.host_address for d in gpu_port.devices}


def test_more_vfs_than_gpus_under_a_switch_stay_under_it_shared_out(dgx):
    """DGX A100-like: two NICs under each switch of two GPUs; with two VFs of each NIC the
    switch holds four VFs for two GPUs: all really sit there, two per GPU."""
    facts, layout = dgx
    group = layout.switches[0]
    vfs = [{"address": vf.address} for pf in group.nic_pfs
           for vf in facts.device(pf).virtfns]
    placed = place(_spec(gpus=group.gpus, vfs=vfs, allowNoNvlink=True), facts, {})
    _, port = _port_of(placed, group.gpus[0])
    placed_vfs = [d for d in port.devices if d.kind == "vf"]
    assert len(placed_vfs) == len(vfs) and all(vf.gpudirect for vf in placed_vfs)
    per_gpu = [sum(vf.paired_with == gpu for vf in placed_vfs) for gpu in group.gpus]
    assert per_gpu == [len(vfs) // 2] * 2


# -- several VMs per node --------------------------------------------------------------------

def test_two_vms_per_two_socket_node_take_a_socket_each(hgx_facts):
    facts, layout = hgx_facts
    vfs = _vfs(facts, layout.nic_pfs)  # every NIC's first VF: each VM takes its node's
    taken: dict[str, str] = {}
    pinned: dict[int, str] = {}
    placed = []
    for index in range(2):
        spec = _spec(name=f"vm{index}", gpus=4, vfs=vfs, allowNoNvlink=True,
                     hostShare={"index": index, "count": 2})
        layout_ = place(spec, facts, taken, pinned=pinned)
        placed.append(layout_)
        node = layout_.cells[0].host_node
        assert [cell.host_node for cell in layout_.cells] == [index] == [node]
        for device in layout_.devices:
            assert facts.device(device.host_address).numa_node == node
            taken[device.host_address] = spec.name
        assert {d.kind for d in layout_.devices} == {"gpu", "vf"}
        assert all(d.gpudirect for d in layout_.devices if d.kind == "vf")
        for cell in layout_.cells:
            assert set(cell.host_cpus) <= set(facts.node(node).cpus)
            pinned.update({cpu: spec.name for cpu in cell.host_cpus})
    gpus = [{d.host_address for d in one.devices if d.kind == "gpu"} for one in placed]
    assert not gpus[0] & gpus[1] and len(gpus[0] | gpus[1]) == 8


def test_vcpus_avoid_cpus_another_domain_is_pinned_to(hgx_facts):
    facts, _ = hgx_facts
    spec = _spec(gpus=0, vcpus=4, numaNodes=[0])
    first = place(spec, facts, {})
    pinned = {cpu: "first" for cpu in first.cells[0].host_cpus + first.emulator_cpus}
    second = place(spec, facts, {}, pinned=pinned)
    assert not set(second.cells[0].host_cpus) & set(pinned)
    every = facts.node(0).cpus
    crowded = {cpu: "first" for cpu in every[1:-2]}
    with pytest.raises(PlacementError, match="4 vCPUs on host node 0, which has 2 CPUs after "
                                             "1 reserved and those pinned by domain.s. first"):
        place(spec, facts, {}, pinned=crowded)


def test_a_share_needs_as_many_numa_nodes(hgx_facts):
    facts, _ = hgx_facts
    with pytest.raises(PlacementError, match="3 VMs per host.*2 node.*at most 2 VMs"):
        place(_spec(gpus=0, hostShare={"index": 0, "count": 3}), facts, {})
    with pytest.raises(PlacementError, match=r"numaNodes names node\(s\) \[5\]"):
        place(_spec(gpus=0, numaNodes=[5]), facts, {})


@pytest.mark.parametrize("values, words", [
    ({"numaNodes": [0], "hostShare": {"index": 0, "count": 2}}, "not both"),
    ({"hostShare": {"index": 2, "count": 2}}, "index 2 is not below count 2"),
    ({"numaNodes": []}, "at least one"),
])
def test_bad_share_inputs(values, words):
    with pytest.raises(ValidationError, match=words):
        _spec(**values)


def test_cpu_lists_as_libvirt_writes_them():
    assert cpu_list("0-3,8,^2") == [0, 1, 3, 8]
    assert cpu_list("5") == [5]


# -- placement serialized per host -----------------------------------------------------------

# A virsh stand-in for the two calls `vela_vm_define` makes, with the real one's semantics
# (virsh(1): `list --all --name` prints each defined domain's name on a line, then an empty
# line; `define` adds a domain, or fails when one of that name with another UUID exists).
# The listing takes a moment, as a real libvirtd round trip does, so two unserialized
# placements both see the host before either defines.
VIRSH_STANDIN = r'''#!/bin/sh
state="$VIRSH_STATE"
while [ "$1" = -c ] || [ "$1" = -q ]; do [ "$1" = -c ] && shift; shift; done
case $1 in
  list) sleep 0.3; ls "$state"; echo ;;
  define)
    [ "$2" = --validate ] && shift
    name=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$2")
    [ -e "$state/$name" ] && { echo "error: domain '$name' already exists" >&2; exit 1; }
    : > "$state/$name"; echo "Domain '$name' defined from $2" ;;
  *) echo "error: unknown command '$1'" >&2; exit 1 ;;
esac
'''


def test_two_placements_at_once_define_one_after_the_other(tmp_path):
    """Both VMs were placed against a host with no domain; under the host's lock the first
    defines, the second finds a domain it did not see and exits 75 (GpuVm places again)."""
    import base64
    import subprocess

    from providers.common import shell

    bin_dir, state, root = tmp_path / "bin", tmp_path / "domains", tmp_path / "root"
    for directory in (bin_dir, state, root / "run"):
        directory.mkdir(parents=True)
    (bin_dir / "virsh").write_text(VIRSH_STANDIN)
    (bin_dir / "virsh").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "VIRSH_STATE": str(state)}

    def define(name: str):
        xml = base64.b64encode(f"<domain><name>{name}</name></domain>".encode()).decode()
        text = shell.script([shell.call("vela_vm_define", name, xml, "")], sysroot=str(root))
        return subprocess.Popen(["sh", "-c", text], env=env, stderr=subprocess.PIPE, text=True)

    running = [define("vm0"), define("vm1")]
    results = sorted((process.wait(), process.stderr.read()) for process in running)
    assert [code for code, _ in results] == [0, 75]
    assert "placement raced: other domains now 'vm" in results[1][1]
    assert len(list(state.iterdir())) == 1
    # Placed again with the new domain seen, it defines.
    first = next(state.iterdir()).name
    second = "vm1" if first == "vm0" else "vm0"
    xml = base64.b64encode(f"<domain><name>{second}</name></domain>".encode()).decode()
    again = subprocess.run(["sh", "-c", shell.script(
        [shell.call("vela_vm_define", second, xml, f"{first} ")], sysroot=str(root))],
        env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


def test_a_new_guest_needs_free_huge_pages_on_each_of_its_nodes(hgx_facts):
    """The HGX fixture reserves 64 free 1 GiB pages per node; a guest of 200 GiB on node 0 does
    not fit, and preflight says where and how many (before anything is written)."""
    from providers.gpu_vm.observe import VmObservations
    from providers.gpu_vm.preflight import preflight

    facts, _ = hgx_facts
    observed = VmObservations(hugetlbfs={"/dev/hugepages": "rw,relatime,pagesize=1024M"},
                              image_format="qcow2", libvirt_version=(9, 0, 0))
    spec = _spec(gpus=0, memoryGib=200, numaNodes=[0])
    problems = preflight(spec, facts, observed, place(spec, facts, {}), new=True)
    assert "host NUMA node 0 has 64 free 1 GiB huge page(s); guest cell 0 needs 200" in problems
    fits = _spec(gpus=0, memoryGib=64, numaNodes=[0])
    assert not [p for p in preflight(fits, facts, observed, place(fits, facts, {}), new=True)
                if "huge page" in p]


def test_a_whole_node_guest_target_names_its_nics_for_nccl(hgx_facts):
    """What create outputs and seeds for a whole HGX node: its VFs named vela0..3 in the
    topology file and the environment alike, GPUDirect only where a NIC shares the switch,
    and the plan's define saying the guest has NVLink and GPUDirect on every GPU."""
    from lxml import etree

    from providers.common.plan import Round
    from providers.gpu_vm.observe import VmObservations
    from providers.gpu_vm.plan import plan
    from providers.gpu_vm.target import desired_domain

    facts, layout = hgx_facts
    observed = VmObservations(hugetlbfs={"/dev/hugepages": "rw,relatime,pagesize=1024M"},
                              image_format="qcow2", libvirt_version=(9, 0, 0))
    spec = _spec(gpus=8, vcpus=16, memoryGib=64, vfs=_vfs(facts, layout.nic_pfs[::2]))
    target = desired_domain("hgx-01", spec, facts, observed)
    names = [f"vela{index}" for index in range(4)]
    assert target.environment["NCCL_IB_HCA"] == "=" + ",".join(names)
    assert target.environment["NCCL_SOCKET_IFNAME"] == "=" + ",".join(names)
    assert target.environment["NCCL_IB_GID_INDEX"] == "3"  # ConnectX-6 Ethernet VFs: RoCE
    nets = etree.fromstring(target.topology.encode()).iter("net")
    assert sorted((net.get("name"), net.get("gdr")) for net in nets) == \
        [(name, "1") for name in names]
    define = next(change for change in plan(spec, target, observed,
                                            Round(booted=False, number=0)).changes
                  if change.kind == "domain")
    assert define.detail == ("define; NVLink: yes, every GPU and NVSwitch; "
                             "GPUDirect: 8 of 8 GPU(s) share a PCIe switch with a NIC")


def test_pages_promised_to_a_defined_guest_not_yet_running_are_not_free(hgx_facts):
    """A guest defined a moment before (its start still to come) will take 60 pages of node
    0's 64: the next guest on node 0 sees 4, not 64. A running guest's pages are already
    out of the free count, so they are not subtracted twice."""
    from providers.gpu_vm.observe import Domain, VmObservations
    from providers.gpu_vm.preflight import preflight
    from providers.gpu_vm.xml.domain import domain, render
    from providers.gpu_vm.xml.spec import DomainSpec

    facts, _ = hgx_facts
    first = _spec(name="first", gpus=0, memoryGib=60, numaNodes=[0])
    xml = render(domain(DomainSpec(name="first", domain_type="kvm", cpu_model="host-passthrough",
                                   phys_bits_mode="emulate", hugepage_kib=1048576,
                                   firmware="bios"), place(first, facts, {})))
    mounts = {"/dev/hugepages": "rw,relatime,pagesize=1024M"}
    second = _spec(name="second", gpus=0, memoryGib=8, numaNodes=[0])
    layout = place(second, facts, {})
    for state, problem in (("shut off", True), ("running", False)):
        observed = VmObservations(hugetlbfs=mounts, image_format="qcow2",
                                  libvirt_version=(9, 0, 0), domains=[Domain("u", xml, state)])
        pages = [p for p in preflight(second, facts, observed, layout, new=True)
                 if "huge page" in p]
        assert pages == (["host NUMA node 0 has 4 free 1 GiB huge page(s) once defined guests "
                          "not yet running take their 60; guest cell 0 needs 8"]
                         if problem else [])


def test_delete_removes_a_definition_libvirt_refused_earlier():
    """`vela_vm_define` keeps a refused definition in /var/lib/vela/failed/NAME.xml for the
    user to read; deleting the guest removes it with the volumes, and the directories if empty."""
    from providers.gpu_vm.observe import VmObservations, paths
    from providers.gpu_vm.plan import plan_removal, removal_finish

    spec = _spec(name="vm")
    where = paths(spec)
    observed = VmObservations(present={where["seed"], where["failed"]})
    removal = plan_removal(spec, observed)
    assert [(c.subject, c.detail) for c in removal.changes] == [
        (where["seed"], "remove"), ("/var/lib/vela/failed/vm.xml", "remove")]
    assert "/var/lib/vela/failed" in removal_finish()[0]
