"""HostTuning on three more hardware layouts (tests/support/layouts.py), through the product's
own path: facts gathered from the written root, then select_topology, desired_target and the
planner, and for some the whole converge loop on the fake kernel.

- IBM's Vela HGX A100 sample: only two of the four GPU switches hold a NIC;
- a DGX A100-like node: AMD EPYC, two single-port NICs under every GPU switch;
- the recorded ASUS ESC8000A-E12: AMD EPYC Genoa, GPUs and ConnectX-7 on root ports.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from providers.facts import gather_facts
from providers.host import LocalHost
from providers.host_tuning import grub
from providers.host_tuning.plan import plan
from providers.host_tuning.preflight import preflight
from providers.host_tuning.provider import converge_desired, observe, restore_originals
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import (
    ACS_MASK,
    ACS_VM,
    desired_target,
    merge_originals,
    original_target,
    select_topology,
)
from tests.support.fakehost import FakeHost, ImpossibleHardware
from tests.support.fakekernel import FakeKernel, KernelHost, firmware_standin
from tests.support.layouts import (
    ESC8000A_GRUB_DEFAULT,
    IBM_GROUPS,
    amd_epyc_host,
    dgx_a100,
    ibm_hgx_a100,
)
from tests.support.recorded import recorded
from tests.support.rootstate import root_snapshot

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
DEBIAN_GRUB = recorded("files/etc-default-grub-debian12.txt")


class Bench:
    """A written fixture, a host rooted at it, the fake kernel, and a HostTuning spec."""

    def __init__(self, root: Path, fake: FakeHost, **spec) -> None:
        self.fake = fake
        self.root = fake.write(root)
        self.kernel = FakeKernel(fake, self.root)
        self.host = KernelHost(self.kernel)
        inputs = {"address": "10.0.0.1", "hostKey": HOST_KEY,
                  "firmware": {"tool": firmware_standin(self.root)}, **spec}
        self.spec = HostTuningArgs.model_validate(inputs)

    def look(self):
        now = observe(self.host, self.spec)
        topology = select_topology(self.spec, now.facts)
        return (now.facts, now.observed, topology,
                desired_target(self.spec, now.facts, now.observed, topology))

    def plan(self):
        facts, observed, _, desired = self.look()
        return plan(desired, facts, observed)

    def converge(self) -> dict:
        return converge_desired(self.host, self.spec.model_copy(update={"reboot": "allowed"}),
                                {})

    def restore(self, outputs: dict):
        return restore_originals(self.host, self.spec.model_copy(update={"reboot": "allowed"}),
                                 outputs)

    def snapshot(self) -> dict:
        return root_snapshot(self.root)


def _acs(desired) -> dict[str, object]:
    return {register.address: register for register in desired.registers.values()
            if register.what == "ACS control"}


def _kernel_tokens(desired) -> list[str]:
    return [token for token in desired.kernel_args.values() if token]


def _groups(facts) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for device in facts.pci.values():
        groups.setdefault(device.iommu_group, []).append(device.address)
    return groups


# -- (a) IBM Vela's HGX A100 sample: NICs under two of the four switches -----------------------

def test_ibm_sample_layout_seen_through_the_facts_layer(tmp_path):
    host, layout = ibm_hgx_a100()
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    assert facts.cpu_vendor == "GenuineIntel" and facts.iommu.kind == "intel"
    for label, node, has_nic in IBM_GROUPS:
        group = layout.labels[label]
        first = int(label, 16)
        # The sample's first GPU keeps its address; the others sit one bus further each.
        assert group.gpus == [f"0000:{first:02x}:00.0", f"0000:{first + 1:02x}:00.0"]
        assert group.nic_pfs == ([f"0000:{first + 2:02x}:00.0", f"0000:{first + 2:02x}:00.1"]
                                 if has_nic else [])
        for address in group.gpus + group.nic_pfs:
            assert facts.upstream_switch(address) == group.upstream
            assert facts.device(address).numa_node == node
    for pf in layout.nic_pfs:
        assert facts.device(pf).vendor_device == "15b3:101d"  # the sample's ConnectX-6 Dx
    assert len({facts.upstream_switch(gpu) for gpu in layout.gpus}) == 4


def test_ibm_sample_pairs_and_acs_only_where_a_nic_shares_the_switch(tmp_path):
    bench = Bench(tmp_path, ibm_hgx_a100(grub_defaults=DEBIAN_GRUB)[0])
    _, layout = ibm_hgx_a100()
    facts, _, topology, desired = bench.look()
    pairs = {pair.gpu: pair for pair in topology.pairs}
    acs = _acs(desired)
    for label in ("c9", "a1"):
        for gpu in layout.labels[label].gpus:
            assert pairs[gpu].nic is None and pairs[gpu].switch == layout.labels[label].upstream
            # No NIC under this switch: nothing on the GPU's path gets an ACS write.
            assert not set(facts.device(gpu).upstream) & set(acs)
    for label in ("dd", "b5"):
        group = layout.labels[label]
        for gpu in group.gpus:
            assert pairs[gpu].nic == group.nic_pfs[0]
            path = facts.path_between(gpu, group.nic_pfs[0])
            ports = [bridge for bridge in path if facts.device(bridge).port_type ==
                     "downstream_port"]
            assert len(ports) == 2 and set(ports) <= set(acs)
    # Exactly the downstream ports of the dd and b5 switches: 2 GPU ports and 1 NIC port each.
    wanted = {facts.device(address).parent for label in ("dd", "b5")
              for address in layout.labels[label].gpus + layout.labels[label].nic_pfs}
    assert set(acs) == wanted and len(wanted) == 6
    assert all(register.value == ACS_VM for register in acs.values())
    changed = {change.subject for change in plan(desired, facts, bench.look()[1]).changes
               if change.kind == "register" and "ACS" in change.detail}
    assert changed == wanted
    assert "intel_iommu=on" in _kernel_tokens(desired) and "iommu=pt" in _kernel_tokens(desired)


def test_no_device_but_device_0_below_a_downstream_port():
    """A downstream port's link has one device on it, device 0: Linux scans only device 0
    there (drivers/pci/probe.c only_one_child, pci_scan_slot), so FakeHost refuses any other.
    The IBM sample's dd:01.0/dd:02.0 are the VM's addresses, not a host's."""
    host = FakeHost()
    host.numa_node(0, "0-7", 64)
    switch = host.switch(host.root_port(host.root_complex(0xDA, 0), 1), 1)
    host.endpoint(switch.downstream[0], vendor_id=0x10DE, device_id=0x20B2,
                  class_code=0x030200)
    with pytest.raises(ImpossibleHardware, match="only device 0"):
        host.endpoint(switch.downstream[0], vendor_id=0x10DE, device_id=0x20B2,
                      class_code=0x030200, device=1)


# -- (b) DGX A100: two single-port NICs under every GPU switch --------------------------------

def _recorded_topology_pairs() -> list[tuple[set[int], set[int]]]:
    """From the recorded `nvidia-smi topo -m`: each GPU's NICs on its own switch (PIX/PXB)."""
    text = recorded("topology/nvsmi-topo-8xA100-17nic-xuesongtap.txt")
    header = next(line for line in text.splitlines() if line.strip().startswith("GPU0"))
    columns = header.split()
    pairs = []
    for line in text.splitlines():
        cells = line.split()
        if line == header or not cells or not re.fullmatch(r"GPU\d", cells[0]):
            continue
        links = dict(zip(columns, cells[1:], strict=False))
        gpus = {int(name[3:]) for name, link in links.items()
                if name.startswith("GPU") and (link == "X" or link.startswith("NV"))}
        nics = {int(name[3:]) for name, link in links.items()
                if name.startswith("NIC") and link in {"PIX", "PXB"}}
        pairs.append((gpus, nics))
    return pairs


def test_dgx_layout_has_the_recorded_shape(tmp_path):
    """GPUs in pairs, each pair with NICs of its own on its switch and none shared: what the
    recorded 8x A100 `nvidia-smi topo -m` shows (PXB to its own NICs, SYS to the others)."""
    recorded_nics = [nics for _, nics in _recorded_topology_pairs()]
    assert len(recorded_nics) == 8
    for first in range(0, 8, 2):
        assert recorded_nics[first] == recorded_nics[first + 1]  # a pair shares its NICs
        others = set().union(*(recorded_nics[i] for i in range(8) if i // 2 != first // 2))
        assert recorded_nics[first] and not recorded_nics[first] & others
    host, layout = dgx_a100()
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    assert facts.cpu_vendor == "AuthenticAMD" and facts.iommu.kind == "amd"
    assert len(layout.switches) == 4
    for switch in layout.switches:
        assert len(switch.gpus) == 2 and len(switch.nic_pfs) == 2
        members = switch.gpus + switch.nic_pfs
        assert {facts.upstream_switch(address) for address in members} == {switch.upstream}
        # Each on a downstream port of its own.
        assert len({facts.device(address).parent for address in members}) == 4
        for pf in switch.nic_pfs:
            assert facts.device(pf).vendor_device == "15b3:101b"
            assert facts.device(pf).class_code >> 8 == 0x0207  # InfiniBand


@pytest.mark.parametrize("switch_acs", [0x005F, 0x001F])
def test_dgx_both_nics_of_a_switch_get_acs_masked_by_the_port(tmp_path, switch_acs):
    """0x001F: a real ACS Capability without Direct Translated P2P (the recorded Haswell-E root
    port, tests/data/recorded/pci_config/intel-haswell-e-root-port-acs-enabled)."""
    host, layout = dgx_a100(switch_acs=switch_acs, grub_defaults=DEBIAN_GRUB)
    bench = Bench(tmp_path, host)
    facts, _, topology, desired = bench.look()
    acs = _acs(desired)
    for switch in layout.switches:
        for nic in switch.nic_pfs:
            port = facts.device(nic).parent
            register = acs[port]
            supported = facts.device(port).caps.acs.capability & ACS_MASK
            assert supported == switch_acs
            assert register.mask == supported and register.value == ACS_VM & supported
        for gpu in switch.gpus:
            assert facts.device(gpu).parent in acs
    assert len(acs) == 4 * 4  # two GPU ports and two NIC ports per switch
    assert {pair.nic for pair in topology.pairs} == {s.nic_pfs[0] for s in layout.switches}


def test_dgx_iommu_groups_separate_every_gpu_and_nic(tmp_path):
    host, layout = dgx_a100(nic_vfs=2)
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    groups = _groups(facts)
    for address in layout.gpus + layout.nic_pfs + layout.nvswitches:
        assert groups[facts.device(address).iommu_group] == [address]
    for pf in layout.nic_pfs:
        for vf in facts.device(pf).virtfns:
            assert groups[facts.device(vf.address).iommu_group] == [vf.address]


def test_dgx_converges_with_ports_lacking_direct_translated_p2p(tmp_path):
    host, layout = dgx_a100(switch_acs=0x001F, nic_vfs=2, grub_defaults=DEBIAN_GRUB)
    bench = Bench(tmp_path, host)
    done = bench.converge()
    assert done["inSync"] and done["drift"] == []
    facts, _, _, desired = bench.look()
    for switch in layout.switches:
        for address in switch.gpus + switch.nic_pfs:
            assert facts.device(facts.device(address).parent).caps.acs.control == 0x001D
    assert "iommu=pt" in facts.cmdline_args
    assert not [arg for arg in facts.cmdline_args if arg.startswith("amd_iommu")]


# -- (c) AMD EPYC Genoa: the recorded ASUS ESC8000A-E12 ---------------------------------------

def _recorded_lspci_tree() -> dict[str, tuple[str, str]]:
    """From the recorded `lspci -tv`: bus -> (root complex bus, root port) for the buses whose
    device 00.0 is an RTX 6000 Ada or a ConnectX-7."""
    text = recorded("topology/lspci-tv-asus-esc8000a-e12-4gpu-2cx7.txt")
    found, complex_ = {}, None
    for line in text.splitlines():
        if match := re.search(r"\[0000:([0-9a-f]{2})\]", line):
            complex_ = match[1]
        match = re.search(r"([0-9a-f]{2}\.[0-7])-\[([0-9a-f]{2})\]--\+-00\.0  "
                          r"(NVIDIA Corporation AD102GL|Mellanox Technologies MT2910)", line)
        if match:
            found[match[2]] = (complex_, match[1])
    return found


def test_epyc_host_puts_gpus_and_nics_where_the_recording_does(tmp_path):
    host, layout = amd_epyc_host()
    facts = gather_facts(LocalHost(str(host.write(tmp_path))))
    assert facts.cpu_vendor == "AuthenticAMD"
    assert facts.iommu.acpi_table == "IVRS" and facts.iommu.kind == "amd"
    assert not facts.iommu.active  # amd_iommu=off, as recorded
    assert "amd_iommu=off" in facts.cmdline_args
    tree = _recorded_lspci_tree()
    assert sorted(tree) == ["01", "21", "41", "81", "c1", "e1"]
    placed = {address.split(":")[1]: layout.ports[address]
              for address in layout.gpus + layout.nic_pfs}
    for bus, (complex_, port) in tree.items():
        assert placed[bus] == f"0000:{complex_}:{port}"
        device = facts.device(f"0000:{bus}:00.0")
        assert device.upstream == [f"0000:{complex_}:{port}"]
        assert facts.upstream_switch(device.address) is None  # no PCIe switch anywhere
    # NUMA nodes as `lspci -vvv` recorded them for 01, 41, c1, e1, 21 and 81.
    assert {address.split(":")[1]: facts.device(address).numa_node
            for address in layout.gpus + layout.nic_pfs[::2]} == \
        {"01": 0, "41": 0, "c1": 1, "e1": 1, "21": 0, "81": 1}
    for audio in layout.gpu_audio:
        assert facts.device(audio).vendor_device == "10de:22ba"
    pf = facts.device(layout.nic_pfs[0])
    assert pf.vendor_device == "15b3:1021" and pf.sriov_totalvfs == 16
    assert pf.caps.sriov.vf_device_id == 0x101E and pf.caps.sriov.vf_offset == 2
    assert pf.caps.acs.supported() == set() and pf.caps.ats is None


def test_amd_host_kernel_args_are_iommu_pt_without_amd_iommu_on(tmp_path):
    """`amd_iommu=` takes fullflush, off, force_isolation, ... but no `on`: the AMD IOMMU is on
    by default (Documentation/admin-guide/kernel-parameters.txt; drivers/iommu/amd/init.c,
    parse_amd_iommu_options, prints "Unknown option - 'on'"). Intel's needs intel_iommu=on."""
    host, layout = amd_epyc_host(amd_iommu_off=False)  # with it: the next test
    bench = Bench(tmp_path, host)
    facts, observed, topology, desired = bench.look()
    tokens = _kernel_tokens(desired)
    assert "iommu=pt" in tokens
    assert not [key for key in desired.kernel_args if key.endswith("_iommu")]
    assert not [token for token in tokens if token.startswith(("amd_iommu", "intel_iommu"))]
    change = [c for c in plan(desired, facts, observed).changes if c.kind == "kernel-args"]
    assert change and "amd_iommu" not in change[0].detail
    assert "+vfio-pci.ids=" in change[0].detail
    # Originals (what delete restores) hold no amd_iommu key either.
    originals = merge_originals(None, original_target(desired, facts, observed))
    assert not [key for key in originals.kernel_args if key.endswith("_iommu")]
    assert not [key for keys in originals.grub.values() for key in keys
                if key.endswith("_iommu")]
    # No GPU shares a switch with a NIC (the recording's topo -m: NODE/SYS only): no pairing,
    # no ACS write anywhere.
    assert [pair.nic for pair in topology.pairs] == [None] * 4
    assert _acs(desired) == {}


def test_intel_hosts_keep_intel_iommu_on(tmp_path):
    bench = Bench(tmp_path, ibm_hgx_a100(grub_defaults=DEBIAN_GRUB)[0])
    _, _, _, desired = bench.look()
    assert desired.kernel_args["intel_iommu"] == "intel_iommu=on"
    assert "amd_iommu" not in desired.kernel_args


def test_amd_host_with_its_iommu_up_passes_each_gpu_with_its_audio_function(tmp_path):
    """A GPU and its HD Audio function have no ACS between them, so the kernel puts both in one
    IOMMU group: both go to vfio-pci, or the group is unusable. The default selectors pick the
    VGA-class GPUs, not their audio functions, which go along as group companions only."""
    host, layout = amd_epyc_host(amd_iommu_off=False)
    bench = Bench(tmp_path, host)
    facts, _, topology, desired = bench.look()
    assert facts.iommu.active
    assert topology.selected == topology.gpus == layout.gpus
    groups = _groups(facts)
    for gpu, audio in zip(layout.gpus, layout.gpu_audio, strict=True):
        assert groups[facts.device(gpu).iommu_group] == [gpu, audio]
    assert topology.vfio_devices == sorted(layout.gpus + layout.gpu_audio)
    assert "vfio-pci.ids=10de:22ba,10de:26b1" in _kernel_tokens(desired)


def test_amd_host_converges_and_delete_restores_it_byte_for_byte(tmp_path):
    host, _ = amd_epyc_host(amd_iommu_off=False)  # VFs are SriovPool's, gone at a reboot
    bench = Bench(tmp_path, host)
    before = bench.snapshot()
    outputs = bench.converge()
    assert outputs["inSync"] and outputs["drift"] == []
    facts, observed, _, _ = bench.look()
    assert "iommu=pt" in facts.cmdline_args
    assert not [arg for arg in facts.cmdline_args if arg.startswith("amd_iommu")]
    restored = bench.restore(outputs)
    assert restored is not None
    after = bench.snapshot()
    assert set(before) ^ set(after) == set()
    assert [key for key in before if before[key] != after[key]] == []
    assert ESC8000A_GRUB_DEFAULT.replace("amd_iommu=off ", "") in \
        (bench.root / "etc/default/grub").read_text()


def test_amd_iommu_off_on_the_command_line_is_removed_in_vm_mode(tmp_path):
    """The recorded host boots with amd_iommu=off: VMs need the IOMMU, so vm mode removes that
    token (and delete puts it back), and the host converges with its GPUs on vfio-pci."""
    host, layout = amd_epyc_host(amd_iommu_off=True)
    bench = Bench(tmp_path, host)
    grub_before = (bench.root / "etc/default/grub").read_text()
    facts, observed, topology, desired = bench.look()
    removed = "amd_iommu" in desired.kernel_args and desired.kernel_args["amd_iommu"] is None
    problems = preflight(bench.spec, facts, observed, topology, desired)
    assert removed and problems == []
    outputs = bench.converge()
    # Two reboots: the firmware's second stage (MAX_ACC_OUT_READ); the IOMMU comes with the first.
    assert outputs["inSync"] and outputs["reboots"] == 2
    assert bench.kernel.driver_of(layout.gpus[0]) == "vfio-pci"
    assert "amd_iommu=off" not in bench.look()[0].cmdline_args
    bench.restore(outputs)
    assert "amd_iommu=off" in bench.look()[0].cmdline_args
    # The same arguments back (a removed token returns at the end of its variable: its old
    # place is not recorded; the kernel reads them in any order).
    restored = grub.variables((bench.root / "etc/default/grub").read_text())
    assert {name: sorted(tokens) for name, tokens in restored.items()} == \
        {name: sorted(tokens) for name, tokens in grub.variables(grub_before).items()}
