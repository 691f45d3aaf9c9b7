"""HostTuning's planner on the HGX A100 fixture, in both modes, through to convergence.

The fixture's root is read by the real facts/observation script and changed by the real apply
scripts; `FakeKernel` plays the kernel, systemd and reboots (see its docstring), and the
mstconfig stand-in plays the NIC firmware. Everything the planner decides is checked, including
the two-reboot firmware sequence and a delete that restores the host byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.common import originals as saved
from providers.common import shell
from providers.errors import HostTuningError
from providers.host import LocalHost
from providers.host_tuning.observe import ORIGINALS_FILE
from providers.host_tuning.plan import plan
from providers.host_tuning.preflight import preflight
from providers.host_tuning.provider import converge_desired, observe, restore_originals
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import (
    ACS_VM,
    desired_target,
    merge_originals,
    original_target,
    select_topology,
)
from tests.support.fakekernel import FakeKernel, KernelHost, firmware_standin
from tests.support.hgx import hgx_a100
from tests.support.recorded import recorded
from tests.support.rootstate import root_snapshot

STANDIN = "standin"  # in a spec: the mstconfig stand-in, wrapped for the rig's root
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
DEBIAN_GRUB = recorded("files/etc-default-grub-debian12.txt")


class Rig:
    """The HGX fixture, a host rooted at it, and the fake kernel."""

    def __init__(self, root: Path, mode: str = "vm", nic_ats: bool = False,
                 switch_acs: int = 0x005F, second_nic: bool = False, nic_vfs: int = 0,
                 **spec) -> None:
        # No VFs by default: a power cycle removes them (SriovPool's unit makes them again).
        self.fake, self.layout = hgx_a100(nic_vfs=nic_vfs, nic_ats=nic_ats, switch_acs=switch_acs,
                                          second_nic=second_nic, grub_defaults=DEBIAN_GRUB)
        self.root = self.fake.write(root)
        self.kernel = FakeKernel(self.fake, self.root)
        self.host = KernelHost(self.kernel)
        self.spec = self.spec_with(**{
            "mode": mode, "hugepages": {"perNode": {"0": 8, "1": 8}},
            "firmware": {"tool": STANDIN}, "sysctls": {"vm.swappiness": "10"}, **spec})
        (self.root / "proc/sys/vm").mkdir(parents=True, exist_ok=True)
        (self.root / "proc/sys/vm/swappiness").write_text("60\n")

    def spec_with(self, **changes) -> HostTuningArgs:
        inputs = {"address": "10.0.0.1", "hostKey": HOST_KEY, **changes}
        firmware = inputs.get("firmware") or {}
        if firmware.get("tool") == STANDIN:
            inputs["firmware"] = {**firmware, "tool": firmware_standin(self.root)}
        return HostTuningArgs.model_validate(inputs)

    def look(self):
        now = observe(self.host, self.spec)
        topology = select_topology(self.spec, now.facts)
        return (now.facts, now.observed, topology,
                desired_target(self.spec, now.facts, now.observed, topology))

    def plan(self, target=None):
        facts, observed, _, desired = self.look()
        return plan(target or desired, facts, observed)

    def apply(self, calls: list[str]) -> None:
        self.host.run_script(shell.script(calls, sysroot=str(self.root)))

    def converge(self, **spec) -> dict:
        """The provider's create: its own converge loop, the fake kernel doing the reboots;
        returns the outputs."""
        return converge_desired(self.host, self.spec.model_copy(update={"reboot": "allowed",
                                                                        **spec}), {})

    def restore(self, outputs: dict | None = None):
        """The provider's delete."""
        return restore_originals(self.host, self.spec.model_copy(update={"reboot": "allowed"}),
                                 outputs or {})

    def snapshot(self) -> dict:
        """What delete must give back: command line, files, sysfs values, firmware."""
        return root_snapshot(self.root)


def _settled(current) -> bool:
    """Nothing to change and nothing waiting for a reboot."""
    return not current.changes and not current.pending


def _by_kind(current, kind):
    return [change for change in current.changes if change.kind == kind]


def test_vm_mode_plan_for_a_fresh_hgx_node(tmp_path):
    rig = Rig(tmp_path)
    current = rig.plan()
    args, = _by_kind(current, "kernel-args")
    assert args.effect == "next-boot"
    for token in ["intel_iommu=on", "iommu=pt", "vfio-pci.ids=10de:1af1,10de:20b2",
                  "modprobe.blacklist=nouveau", "rd.driver.blacklist=nouveau",
                  "default_hugepagesz=1G", "hugepagesz=1G", "hugepages=0:8,1:8"]:
        assert f"+{token}" in args.detail.split()
    vfio = {change.subject for change in _by_kind(current, "driver")}
    assert vfio == set(rig.layout.gpus) | set(rig.layout.nvswitches)
    acs = [change for change in _by_kind(current, "register") if "ACS" in change.detail]
    # Per switch: the downstream ports of both GPUs and of the NIC (the upstream port has no
    # ACS capability, as the specification allows).
    assert len(acs) == 12 and all(change.detail.endswith(f"-> {ACS_VM:#06x}") for change in acs)
    mrrs = [change for change in _by_kind(current, "register") if "Max Read" in change.detail]
    assert len(mrrs) == 8 + 8  # GPUs and NIC PFs: a VF's Max Read Request is RsvdP
    assert all(int(change.detail.split("-> ")[1], 16) & 0x7000 == 0x5000 for change in mrrs)
    firmware = _by_kind(current, "firmware")
    assert [change.subject for change in firmware] == [
        pfs[0] for pfs in (switch.nic_pfs for switch in rig.layout.switches)]
    assert all("MAX_ACC_OUT_READ" not in change.detail for change in firmware)
    assert "ADVANCED_PCI_SETTINGS=1" in firmware[0].detail
    assert "ATS_ENABLED=1" in firmware[0].detail and "NUM_OF_VFS=8" in firmware[0].detail
    assert "PCI_WR_ORDERING" not in firmware[0].detail  # per_mkey(0) already: nothing to set
    assert current.reboots_required == 2  # MAX_ACC_OUT_READ waits for ADVANCED_PCI_SETTINGS
    assert {change.subject for change in _by_kind(current, "hugepages")} == {"node0", "node1"}
    assert [change.subject for change in _by_kind(current, "sysctl")] == ["vm.swappiness"]
    assert [change.detail for change in _by_kind(current, "unit")] == ["enable"]


def test_baremetal_mode_differs_only_in_acs_ats_and_write_ordering(tmp_path):
    """Besides binding nothing to vfio-pci (no VMs on a baremetal node: its vfio defaults to
    false, tests/unit/test_baremetal_mode.py), which a VM host may also leave off."""
    vm = Rig(tmp_path / "vm", vfio=False).plan()
    bare = Rig(tmp_path / "bare", mode="baremetal").plan()
    assert not [change for change in bare.changes if change.kind == "driver"]
    assert [c.subject for c in vm.changes] == [c.subject for c in bare.changes]
    differing = {(a.kind, a.subject) for a, b in zip(vm.changes, bare.changes, strict=True)
                 if a.detail != b.detail}
    kinds = {kind for kind, _ in differing}
    assert kinds == {"register", "firmware"}  # ACS values; firmware ATS and write ordering
    bare_acs = [c for c in bare.changes if c.kind == "register" and "ACS" in c.detail]
    assert all(c.detail.endswith("-> 0x0000") or "0x001d -> 0x0000" in c.detail
               for c in bare_acs)
    bare_fw = [c for c in bare.changes if c.kind == "firmware"][0].detail
    assert "ATS_ENABLED=0" not in bare_fw  # already 0 on the stand-in: nothing to set
    assert "PCI_WR_ORDERING=1" in bare_fw


def test_two_reboot_firmware_sequence_then_an_empty_plan(tmp_path):
    rig = Rig(tmp_path)
    done = rig.converge()
    assert done["reboots"] == 2  # the command line and stage 1 firmware, then MAX_ACC_OUT_READ
    assert done["inSync"] and not done["pendingReboot"] and done["drift"] == []
    firmware = [change for change in done["changes"] if change.startswith("firmware")]
    assert len(firmware) == 8 and all("MAX_ACC_OUT_READ=44" in change for change in firmware[4:])
    assert all("MAX_ACC_OUT_READ" not in change for change in firmware[:4])
    final = rig.plan()
    assert _settled(final) and final.reboots_required == 0
    assert final.calls == []
    facts, observed, topology, desired = rig.look()
    assert facts.device(rig.layout.gpus[0]).driver == "vfio-pci"
    assert facts.device(rig.layout.gpus[0]).caps.pcie.max_read_request == 4096
    assert facts.node(0).pool(1048576).total == 8
    switch = rig.layout.switches[0]
    for bridge in facts.path_between(switch.gpus[0], switch.nic_pfs[0])[1:]:
        assert facts.device(bridge).caps.acs.control == ACS_VM
    params = observed.firmware[switch.nic_pfs[0]].device.params
    assert params["MAX_ACC_OUT_READ"].current == 44 and params["ATS_ENABLED"].current == 1
    assert "intel_iommu=on" in facts.cmdline_args and observed.unit_enabled


def test_without_reboots_the_rest_is_reported_pending(tmp_path):
    rig = Rig(tmp_path)
    assert rig.spec.reboot == "never"
    done = converge_desired(rig.host, rig.spec, {})
    assert done["reboots"] == 0 and done["drift"] == [] and done["pendingReboot"]
    assert "kernel command line: intel_iommu=on takes effect at the next boot" in \
        done["pendingReasons"]
    assert any("MAX_ACC_OUT_READ=44 can be set only once" in reason
               for reason in done["pendingReasons"])
    assert rig.kernel.boots == 0


def test_huge_pages_that_do_not_fit_even_at_boot_fail_clearly(tmp_path):
    rig = Rig(tmp_path)
    rig.kernel.hugepage_room[(1, 1048576)] = 3  # node 1 has room for 3 of the 8 asked for
    with pytest.raises(HostTuningError, match="node1: 3 -> 8 pages.*no room"):
        rig.converge()
    assert rig.kernel.boots == 2  # the firmware needed two; no third reboot was wasted


def test_boot_unit_reapplies_what_a_reboot_forgets(tmp_path):
    rig = Rig(tmp_path)
    rig.converge()
    rig.kernel.reboot()  # config space back to power-on values; the unit runs
    assert _settled(rig.plan())


def test_delete_restores_the_host_byte_for_byte(tmp_path):
    rig = Rig(tmp_path)
    before = rig.snapshot()
    outputs = rig.converge()
    assert rig.snapshot() != before
    restored = rig.restore(outputs)
    assert restored.reboots == 1 and _settled(restored.plan)  # the command line back
    after = rig.snapshot()
    assert {key for key in set(before) ^ set(after)} == set()
    assert [key for key in before if before[key] != after[key]] == []


def test_originals_saved_first_win_over_later_captures(tmp_path):
    rig = Rig(tmp_path)
    facts, observed, _, desired = rig.look()
    first = merge_originals(None, original_target(desired, facts, observed))
    rig.converge()
    facts, observed, _, desired = rig.look()
    later = original_target(desired, facts, observed)
    merged = merge_originals(first.model_dump(), later)
    assert merged == first and later != first


@pytest.mark.parametrize("change, expected", [
    (dict(iommu_table=None), "turn on Intel VT-d"),
    (dict(hugepages={"perNode": {"0": 1024, "1": 1}}), "NUMA node 0: 1024 huge pages"),
    (dict(hugepages={"perNode": {"7": 1}}), "NUMA node 7, which this host does not have"),
    (dict(firmware={"tool": "/usr/bin/definitely-missing-tool"}), "could not query"),
    (dict(firmware={"tool": STANDIN, "settings": {"NO_SUCH_PARAM": 1}}),
     "has no NO_SUCH_PARAM parameter"),
])
def test_preflight_names_the_problem(tmp_path, change, expected):
    host_changes = {key: value for key, value in change.items() if key == "iommu_table"}
    spec_changes = {key: value for key, value in change.items() if key != "iommu_table"}
    rig = Rig(tmp_path, **spec_changes)
    if host_changes:
        (rig.root / "sys/firmware/acpi/tables/DMAR").unlink()
    facts, observed, topology, desired = rig.look()
    problems = preflight(rig.spec, facts, observed, topology, desired)
    assert any(expected in problem for problem in problems), problems


def test_preflight_missing_acs_and_unviable_group(tmp_path):
    from tests.support.fakehost import FakeHost

    host = FakeHost(grub_defaults=DEBIAN_GRUB)
    host.numa_node(0, "0-7", 64)
    # Two cascaded switches without ACS: everything below the outer downstream port shares
    # its IOMMU group (the kernel's rule), and the inner ports cannot be given ACS either.
    top = host.switch(host.root_port(host.root_complex(0x10, 0), 1), 1, acs=None)
    inner = host.switch(top.downstream[0], 2, acs=None)
    gpu, = host.endpoint(inner.downstream[0], vendor_id=0x10DE, device_id=0x20B2,
                         class_code=0x030200, driver="nvidia")
    nic, = host.endpoint(inner.downstream[1], vendor_id=0x15B3, device_id=0x101B,
                         class_code=0x020000, driver="mlx5_core", sriov_total_vfs=8,
                         sriov_vf_device=0x101C, net=["ens1np0"])
    root = host.write(tmp_path)
    spec = HostTuningArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                          "firmware": {"enabled": False}})
    now = observe(LocalHost(str(root)), spec)
    facts, observed = now.facts, now.observed
    topology = select_topology(spec, facts)
    problems = preflight(spec, facts, observed, topology,
                         desired_target(spec, facts, observed, topology))
    assert any("has no ACS capability: turn on \"ACS\"" in p for p in problems)
    assert any(f"also holds {nic.address}" in p for p in problems)


def test_selection_errors(tmp_path):
    rig = Rig(tmp_path, gpuSelector=["10de:9999"])
    from providers.host_tuning.target import SelectionError
    facts = observe(rig.host, rig.spec).facts
    with pytest.raises(SelectionError, match="no device on this host matches"):
        select_topology(rig.spec, facts)
    missing = HostTuningArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                             "gpuSelector": ["0000:ee:00.0"]})
    with pytest.raises(SelectionError, match="no PCI device 0000:ee:00.0"):
        select_topology(missing, facts)


def test_a_run_that_fails_half_way_is_finished_by_the_next(tmp_path):
    from providers.errors import CommandFailed

    rig = Rig(tmp_path)
    before = rig.snapshot()
    blocker = rig.root / "etc/sysctl.d"
    blocker.rmdir()
    blocker.write_text("not a directory\n")  # the sysctl file cannot be written
    facts, observed, _, desired = rig.look()
    originals = merge_originals(None, original_target(desired, facts, observed))
    with pytest.raises(CommandFailed, match="cannot create the directory of /etc/sysctl.d"):
        rig.converge()
    blocker.unlink()
    blocker.mkdir()
    _, observed, _, _ = rig.look()
    # saved before any change
    assert saved.parse(observed.files[ORIGINALS_FILE]) == originals.model_dump(mode="json")
    assert observed.files[ORIGINALS_FILE] == saved.record(originals)
    done = rig.converge()
    assert _settled(rig.plan()) and done["reboots"] == 2
    assert rig.restore() is not None  # from the record on the host alone: no outputs
    assert rig.snapshot() == before


def test_grubby_hosts_get_grubby_commands(tmp_path):
    rig = Rig(tmp_path)
    facts, observed, topology, _ = rig.look()
    observed.tools["grubby"] = "/usr/sbin/grubby"
    observed.grubby_args = "ro crashkernel=auto iommu=nopt"
    target = desired_target(rig.spec, facts, observed, topology)
    change, = [c for c in plan(target, facts, observed).changes if c.kind == "kernel-args"]
    assert change.subject == "grubby" and "+iommu=pt" in change.detail
    assert change.calls[0].startswith("vela_grubby 'intel_iommu=on iommu=pt vfio-pci.ids=")
    originals = original_target(target, facts, observed)
    assert originals.grub == {"grubby": {key: ("iommu=nopt" if key == "iommu" else None)
                                         for key in target.kernel_args}}


def test_preflight_needs_the_config_space_an_unprivileged_user_cannot_read(tmp_path):
    rig = Rig(tmp_path)
    config = rig.root / "sys/bus/pci/devices" / rig.layout.gpus[0] / "config"
    config.write_bytes(config.read_bytes()[:64])  # what a non-root reader gets
    facts, observed, topology, desired = rig.look()
    problems = preflight(rig.spec, facts, observed, topology, desired)
    assert any(f"cannot read the PCIe configuration space of {rig.layout.gpus[0]}" in problem
               and "connect as root" in problem for problem in problems)


def test_hosttuning_leaves_the_vfs_to_sriov_pool(tmp_path):
    """VFs exist only once SriovPool's unit makes them at boot, after HostTuning's: HostTuning
    plans nothing on them (their ATS is SriovPool's), or its boot unit would fail."""
    rig = Rig(tmp_path, nic_ats=True, nic_vfs=2)
    _, _, topology, desired = rig.look()
    assert topology.nic_vfs
    assert not [register for register in desired.registers.values()
                if register.address in topology.nic_vfs]


@pytest.mark.parametrize("record", ["{\"kernel_args\": {", "", "[1, 2]", "{\"files\": 3}"])
def test_a_damaged_originals_record_stops_create_and_delete(tmp_path, record):
    """Read as "no originals", a damaged record would let this create save the tuned state as
    the originals, and delete would then restore the wrong values."""
    rig = Rig(tmp_path)
    rig.apply([shell.write_file(ORIGINALS_FILE, record, 0o600)])
    before = rig.snapshot()
    for run in (rig.converge, rig.restore):
        with pytest.raises(HostTuningError, match=f"{ORIGINALS_FILE} is not a record of the "
                                                  f"values vela found.*will not guess"):
            run()
    assert rig.snapshot() == before  # nothing was changed


def test_a_vf_ignores_max_read_request_writes_and_vela_never_plans_them(tmp_path):
    """The stand-in keeps a VF's Max_Read_Request_Size as the hardware does (RsvdP), so a plan
    that wrote it could never verify; vela sets it on GPUs and PFs only."""
    rig = Rig(tmp_path, nic_vfs=2)
    facts, _, topology, desired = rig.look()
    vf = facts.device(topology.nic_vfs[0])
    before = vf.caps.pcie.max_read_request
    rig.apply([shell.call("vela_cfg_write", vf.address, vf.caps.pcie.offset + 8, 0x5000,
                          0x7000)])
    facts, _, _, _ = rig.look()
    assert facts.device(vf.address).caps.pcie.max_read_request == before != 4096
    assert not [register for register in desired.registers.values()
                if register.address in topology.nic_vfs]


def test_acs_on_ports_without_direct_translated_p2p(tmp_path):
    """A switch port whose ACS Capability lacks DT (0x1F) holds that control bit at 0: vela
    writes and checks only what the port implements, and converges."""
    rig = Rig(tmp_path, switch_acs=0x001F)
    switch = rig.layout.switches[0]
    port = rig.look()[0].path_between(switch.gpus[0], switch.nic_pfs[0])[1]
    offset = rig.look()[0].device(port).caps.acs.offset + 6
    rig.apply([shell.call("vela_cfg_write", port, offset, 0x005D, 0x007F)])  # as vela did
    assert rig.look()[0].device(port).caps.acs.control == 0x001D  # DT held at 0
    _, _, _, desired = rig.look()
    acs = [register for register in desired.registers.values() if register.what == "ACS control"]
    assert acs and {(register.value, register.mask) for register in acs} == {(0x001D, 0x001F)}
    assert not [change for change in _by_kind(rig.plan(), "register") if "ACS" in change.detail]
    done = rig.converge()
    assert done["inSync"] and done["drift"] == []
    facts, _, _, _ = rig.look()
    switch = rig.layout.switches[0]
    for bridge in facts.path_between(switch.gpus[0], switch.nic_pfs[0])[1:]:
        assert facts.device(bridge).caps.acs.control == 0x001D  # SV, RR, CR, UF


def test_every_nic_under_a_switch_is_on_a_gpu_nic_path(tmp_path):
    """Two NICs under one switch (DGX A100-like): the second NIC's downstream port gets ACS
    too, not only the port of the NIC each GPU is paired with."""
    rig = Rig(tmp_path, second_nic=True)
    facts, _, _, desired = rig.look()
    with_acs = {register.address for register in desired.registers.values()
                if register.what == "ACS control"}
    for switch in rig.layout.switches:
        second = switch.nic_pfs[-1]
        assert facts.path_between(switch.gpus[0], second)[-1] in with_acs
    done = rig.converge()
    assert done["inSync"]


def test_connectx_firmware_is_never_skipped_silently(tmp_path):
    """Firmware settings asked for (the recipe's default) on a ConnectX: with no tool given
    and none found, or none that answers, preflight fails and says so; before, the NIC's
    firmware was left out without a word."""
    rig = Rig(tmp_path, firmware={"tool": "auto"})
    facts, observed, topology, desired = rig.look()
    assert sorted(desired.firmware) == sorted(switch.nic_pfs[0]
                                              for switch in rig.layout.switches)
    problems = preflight(rig.spec, facts, observed, topology, desired)
    assert len([p for p in problems if "no mlxconfig or mstconfig on the host" in p
                or "the firmware tool could not query it" in p]) == 4, problems


def test_a_nic_selected_by_its_second_function_is_configured_through_function_zero(tmp_path):
    rig = Rig(tmp_path)
    second = rig.layout.switches[0].nic_pfs[1]
    rig.spec = rig.spec_with(nicSelector=[second], firmware={"tool": STANDIN})
    _, observed, _, desired = rig.look()
    first = second.rsplit(".", 1)[0] + ".0"
    assert list(desired.firmware) == [first] and observed.firmware[first].device is not None


def test_a_host_whose_iommu_is_off_converges_in_one_run(tmp_path):
    """A first boot without the IOMMU (the kernel's default off, or intel_iommu=off): vfio-pci
    refuses every device then (the fake kernel, as drivers/vfio/group.c), so binding waits for
    the boot with intel_iommu=on; planning and preflight run again after it."""
    fake, layout = hgx_a100(iommu_active=False, grub_defaults=DEBIAN_GRUB)
    root = fake.write(tmp_path / "root")
    kernel = FakeKernel(fake, root)
    host = KernelHost(kernel)
    spec = HostTuningArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                          "firmware": {"enabled": False}, "reboot": "allowed"})
    first = observe(host, spec)
    assert not first.facts.iommu.active
    current = plan(desired_target(spec, first.facts, first.observed,
                                  select_topology(spec, first.facts)),
                   first.facts, first.observed)
    assert not _by_kind(current, "driver")  # nothing to bind without an IOMMU
    assert any("vfio-pci" in reason and "IOMMU" in reason for reason in current.reasons())
    done = converge_desired(host, spec, {})
    assert done["inSync"] and not done["pendingReboot"] and done["reboots"] == 1
    assert kernel.refusals == [] and kernel.failed_units == []
    for gpu in layout.gpus:
        assert kernel.driver_of(gpu) == "vfio-pci"


def test_gpus_selected_by_address_are_bound_by_address_not_by_id(tmp_path):
    """vfio-pci.ids (and modprobe's ids=) take every device with that vendor:device at boot
    (the fake kernel binds by id as vfio-pci's id table does): with half of the GPUs selected,
    the others must stay with their driver after a reboot."""
    fake, layout = hgx_a100(grub_defaults=DEBIAN_GRUB)
    root = fake.write(tmp_path / "root")
    kernel = FakeKernel(fake, root)
    host = KernelHost(kernel)
    chosen, left = layout.gpus[:4], layout.gpus[4:]
    spec = HostTuningArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                          "gpuSelector": chosen, "firmware": {"enabled": False},
                                          "reboot": "allowed"})
    now = observe(host, spec)
    desired = desired_target(spec, now.facts, now.observed, select_topology(spec, now.facts))
    assert "10de:20b2" not in (desired.kernel_args.get("vfio_pci.ids") or "")
    drivers = _by_kind(plan(desired, now.facts, now.observed), "driver")
    assert drivers and all("by address" in change.detail for change in drivers)
    done = converge_desired(host, spec, {})
    assert done["inSync"] and done["reboots"] == 1
    kernel.reboot()
    assert kernel.failed_units == [] and kernel.refusals == []
    assert [kernel.driver_of(gpu) for gpu in chosen] == ["vfio-pci"] * 4
    assert [kernel.driver_of(gpu) for gpu in left] == ["nvidia"] * 4
