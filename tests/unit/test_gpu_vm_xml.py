"""GpuVm's placement and domain XML: golden files, libvirt's schema, libvirt's test driver.

Golden files live in tests/data/golden; `VELA_REGENERATE_GOLDEN=1 scripts/test -k golden`
rewrites them on purpose (then review the diff), as virt-manager's tests do.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import libvirt
import pycdlib
import pytest
from lxml import etree

from providers.facts import gather_facts, parse_gather_output
from providers.gpu_vm import guest
from providers.gpu_vm.observe import owned_fields
from providers.gpu_vm.placement import PlacementError, physical_bits, place
from providers.gpu_vm.provider import classify
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.xml.domain import domain, render
from providers.gpu_vm.xml.schema import available, validate
from providers.gpu_vm.xml.spec import DomainSpec
from providers.host import LocalHost
from tests.support.hgx import hgx_a100
from tests.support.recorded import recorded

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KERNEL = {"kernel": "/usr/local/share/vela-guest/vmlinux",
          "initrd": "/usr/local/share/vela-guest/initrd.cpio"}


@pytest.fixture(scope="module")
def hgx():
    host, layout = hgx_a100(nic_vfs=2, hugepages_1g_per_node=512)
    root = host.write(tempfile.mkdtemp(prefix="hgx-"))
    return gather_facts(LocalHost(str(root))), layout


@pytest.fixture(scope="module")
def lab():
    return parse_gather_output(recorded("gather/lab-host-q35-switch.txt"))


def _spec(**values) -> GpuVmArgs:
    return GpuVmArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY, **values})


def _hgx_vm(facts, layout):
    vfs = [{"address": facts.device(pf).virtfns[0].address, "mac": f"02:00:00:00:00:{i:02x}"}
           for i, pf in enumerate(layout.nic_pfs[::2])]
    spec = _spec(name="hgx-vm", vcpus=64, memoryGib=512, gpus=8, vfs=vfs,
                 image={"path": "/var/lib/libvirt/images/ubuntu-22.04.qcow2", "sizeGib": 200},
                 firmware="efi")
    domain_spec = DomainSpec(
        name="hgx-vm", uuid="5d1a3a26-70b0-5e6c-8b3e-2d1f0f2f6a01", domain_type="kvm",
        cpu_model="host-passthrough", phys_bits_mode="emulate", hugepage_kib=1048576,
        firmware="efi", disk="/var/lib/libvirt/images/vela/hgx-vm.qcow2",
        seed="/var/lib/libvirt/images/vela/hgx-vm-seed.iso",
        console_log="/var/log/libvirt/qemu/vela-hgx-vm-console.log")
    return spec, domain_spec


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VELA_REGENERATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; regenerate on purpose if intended"


def _on_test_driver(xml: str) -> None:
    connection = libvirt.open("test:///default")
    try:
        guest_domain = connection.defineXML(xml)
        guest_domain.create()
        assert guest_domain.isActive()
        guest_domain.destroy()
        guest_domain.undefine()
    finally:
        connection.close()


def test_golden_hgx_node_with_8_gpus_and_4_vfs(hgx):
    facts, layout = hgx
    spec, domain_spec = _hgx_vm(facts, layout)
    placed = place(spec, facts, {})
    assert [cell.host_node for cell in placed.cells] == [0, 1]
    assert [len(cell.vcpus) for cell in placed.cells] == [32, 32]
    # The first CPU of each node is left to the emulator; vCPUs are pinned to the others.
    assert placed.emulator_cpus == [0, 40] and placed.cells[0].host_cpus[0] == 1
    assert placed.cells[1].host_cpus[0] == 41
    # The four GPU switches, each with its two GPUs and the VF of the NIC beside them, and
    # the NVSwitches' switch: a whole-node guest takes them all, so NVLink works inside it.
    assert placed.nvlink is True and len(placed.complexes) == 5
    kinds = [[device.kind for device in c.ports[0].devices] for c in placed.complexes]
    assert sorted(kinds) == [["gpu", "gpu", "vf"]] * 4 + [["nvswitch"] * 6]
    for complex_ in placed.complexes:
        switch, = complex_.ports
        assert switch.switch
        for vf in (device for device in switch.devices if device.kind == "vf"):
            assert vf.gpudirect and vf.paired_with == switch.devices[0].host_address
            assert vf.host_switch == switch.devices[0].host_switch
    assert sorted(d.host_address for d in placed.devices if d.kind == "nvswitch") \
        == sorted(layout.nvswitches)
    assert placed.phys_bits == 42  # 512 GiB + 8 x 128 GiB BARs needs more than 40
    element = domain(domain_spec, placed)
    validate(element)
    xml = render(element)
    _golden("hgx-8gpu-4vf.xml", xml)
    _on_test_driver(xml)


def test_golden_lab_guest(lab):
    spec = _spec(name="lab-vm", vcpus=2, memoryGib=2, gpus=2, vfs=[
        {"address": "0000:45:10.0", "mac": "02:00:00:00:01:00"}], kernelBoot=KERNEL,
        domainType="qemu", cpuModel="qemu64", gpuSelector=["1af4:1110"], reservedCpus=0)
    with pytest.raises(PlacementError, match="VF 0000:45:10.0 does not exist"):
        place(spec, lab, {})
    spec = spec.model_copy(update={"vfs": []})
    placed = place(spec, lab, {})
    assert [(cell.host_node, cell.host_cpus) for cell in placed.cells] == [(0, [0]), (1, [1])]
    assert placed.emulator_cpus == []  # one CPU per node: nothing to reserve
    domain_spec = DomainSpec(name="lab-vm", uuid="1f5e6d2c-0c1a-5b7e-9a44-0e6b7c3d2a10",
                             domain_type="qemu", cpu_model="qemu64", phys_bits_mode="emulate",
                             hugepage_kib=1048576, firmware="bios", kernel=KERNEL["kernel"],
                             initrd=KERNEL["initrd"], cmdline="console=ttyS0",
                             seed="/var/lib/libvirt/images/vela/lab-vm-seed.iso")
    element = domain(domain_spec, placed)
    validate(element)
    _golden("lab-2gpu.xml", render(element))
    _on_test_driver(render(element))


def test_reserved_cpus_need_spare_cpus(lab):
    spec = _spec(name="x", vcpus=2, memoryGib=2, gpus=2, kernelBoot=KERNEL, domainType="qemu",
                 cpuModel="qemu64", gpuSelector=["1af4:1110"], reservedCpus=1)
    with pytest.raises(PlacementError, match="0 CPUs after 1 reserved"):
        place(spec, lab, {})


def test_gpus_by_count_prefer_one_numa_node_and_a_switch_with_a_vf(hgx):
    facts, layout = hgx
    far_vf = facts.device(layout.switches[3].nic_pfs[0]).virtfns[0].address
    spec = _spec(name="two", vcpus=8, memoryGib=16, gpus=2, vfs=[{"address": far_vf}],
                 image={"path": "/x.qcow2"}, allowNoNvlink=True)
    placed = place(spec, facts, {})
    gpus = [device for device in placed.devices if device.kind == "gpu"]
    assert [gpu.host_address for gpu in gpus] == layout.switches[3].gpus
    assert [cell.host_node for cell in placed.cells] == [1]


def test_taken_devices_are_refused_or_skipped(hgx):
    facts, layout = hgx
    taken = {gpu: "other-vm" for gpu in layout.gpus[:6]}
    spec = _spec(name="x", vcpus=4, memoryGib=8, gpus=2, image={"path": "/x.qcow2"},
                 allowNoNvlink=True)
    assert [d.host_address for d in place(spec, facts, taken).devices] == layout.gpus[6:]
    with pytest.raises(PlacementError, match="3 GPU.*2 free of 8.*other-vm"):
        place(spec.model_copy(update={"gpus": 3}), facts, taken)
    exact = spec.model_copy(update={"gpus": [layout.gpus[0]]})
    with pytest.raises(PlacementError, match="already assigned to domain 'other-vm'"):
        place(exact, facts, taken)


def test_physical_bits():
    assert physical_bits(4 * 1048576, []) == 40
    assert physical_bits(2048 * 1048576, [128 << 30] * 8) == 43


def test_nccl_topology_groups_gpus_and_nics_by_switch_and_numa_node(hgx):
    facts, layout = hgx
    spec, _ = _hgx_vm(facts, layout)
    placed = place(spec, facts, {})
    topology = etree.fromstring(guest.nccl_topology(placed, "GenuineIntel").encode())
    cpus = topology.findall("cpu")
    assert [cpu.get("numaid") for cpu in cpus] == ["0", "1"]
    for cpu in cpus:
        for switch in cpu.findall("pci"):
            classes = [child.get("class") for child in switch.findall("pci")]
            assert classes == ["0x030200", "0x030200", "0x020000"]
            assert switch.find("pci/nic/net").get("gdr") == "1"
    # NVSwitches are not in NCCL's file: NCCL learns NVLink from NVML in the guest.
    guest_addresses = {d.guest_address for d in placed.devices if d.kind != "nvswitch"}
    assert {pci.get("busid") for pci in topology.iter("pci") if pci.get("class") != "0x060400"} \
        == guest_addresses


def test_seed_is_a_cidata_iso_with_the_tuning(hgx):
    facts, layout = hgx
    spec, _ = _hgx_vm(facts, layout)
    placed = place(spec, facts, {})
    ids = {d.host_address: "0x10de:0x20b2" for d in placed.devices}
    script = guest.tuning_script(spec, placed, ids, "<system/>")
    assert "net.ipv4.tcp_timestamps=0" in script and "MTU='9000'" in script
    image = pycdlib.PyCdlib()
    image.open_fp(io.BytesIO(guest.seed_image(spec, script)))
    assert image.pvd.volume_identifier.decode().strip() == "cidata"
    names = {child.rock_ridge.name().decode()
             for child in image.list_children(iso_path="/") if child.rock_ridge
             and child.rock_ridge.name() not in (b".", b"..")}
    assert names == {"meta-data", "user-data", "vela-guest-tuning.sh"}
    user_data = io.BytesIO()
    image.get_file_from_iso_fp(user_data, rr_path="/user-data")
    assert user_data.getvalue().startswith(b"#cloud-config\n")
    image.close()


def test_changes_are_classified():
    old = {"name": "a", "vcpus": 4, "start": True, "gpus": 2}
    assert classify(old, {**old, "vcpus": 8}) == {"replace": [], "restart": ["vcpus"]}
    assert classify(old, {**old, "gpus": 4})["replace"] == ["gpus"]
    assert classify(old, {**old, "start": False}) == {"replace": [], "restart": []}  # live


def test_owned_fields_ignore_what_libvirt_adds(hgx):
    facts, layout = hgx
    spec, domain_spec = _hgx_vm(facts, layout)
    xml = render(domain(domain_spec, place(spec, facts, {})))
    connection = libvirt.open("test:///default")
    try:
        defined = connection.defineXML(xml)
        assert owned_fields(defined.XMLDesc()) == owned_fields(xml)
        defined.undefine()
    finally:
        connection.close()


def test_schema_is_installed_here():
    """The golden tests validate for real: libvirt's schemas must be present (libvirt0)."""
    assert available()


@pytest.mark.parametrize("values, words", [
    ({"name": "Bad Name"}, "domain name"),
    ({"vcpus": 0}, "greater than or equal to 1"),
    ({"gpus": ["0000:3b:00.0", "0000:3b:00.0"]}, "listed twice"),
    ({"gpus": ["3b:00.0;reboot"]}, "lspci -D"),
    ({"kernelBoot": None, "image": None}, "either image"),
    ({"cpuModel": "host-passthrough", "domainType": "qemu"}, "cannot pass the host CPU"),
    ({"guest": {"sshKeys": ["not a key"]}}, "SSH public key"),
    ({"kernelBoot": {**KERNEL, "cmdline": "console=ttyS0; reboot"}}, "kernel command line"),
    ({"image": {"path": "/img/../etc/shadow"}, "kernelBoot": None}, "absolute path"),
])
def test_bad_inputs(values, words):
    base = {"name": "vm", "vcpus": 2, "memoryGib": 2, "kernelBoot": KERNEL}
    with pytest.raises(ValueError, match=words):
        _spec(**{**base, **values})
