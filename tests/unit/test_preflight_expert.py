"""HostTuning's preflight, the checks someone who runs GPU hypervisor hosts makes first.

VT-x/AMD-V and /dev/kvm for VM hosts, an IOMMU that is really up once the kernel was asked for
it, kernel lockdown (Secure Boot) against config-space writes, a kernel that understands
per-node huge pages on its command line, and the NVIDIA daemons that hold GPUs which are to go
to vfio-pci. Each test writes a fake root with FakeHost, gathers facts and observations from it
with the production script, and runs the production preflight.
"""

from __future__ import annotations

import pytest

from providers.facts import gather_facts
from providers.facts.models import HostFacts, Iommu, iommu_live, iommu_requested
from providers.facts.parse import parse_gather_output
from providers.host import LocalHost
from providers.host_tuning.preflight import preflight
from providers.host_tuning.provider import observe
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import desired_target, select_topology
from tests.support.fakehost import ACS_LINUX_DEFAULT, FakeHost
from tests.support.hgx import hgx_a100
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
DEBIAN_GRUB = recorded("files/etc-default-grub-debian12.txt")
PER_NODE = {"hugepages": {"perNode": {"0": 8, "1": 8}}}
XEON_CPUINFO = recorded("files/proc-cpuinfo-xeon-e5-2670-insights.txt")


def _spec(**inputs) -> HostTuningArgs:
    return HostTuningArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                          "firmware": {"enabled": False}, **inputs})


def _preflight(fake: FakeHost, root, **inputs) -> tuple[HostFacts, list[str]]:
    """Write the host, observe it as the provider does, and run the preflight."""
    fake.write(root)
    spec = _spec(**inputs)
    now = observe(LocalHost(str(root)), spec)
    topology = select_topology(spec, now.facts)
    target = desired_target(spec, now.facts, now.observed, topology)
    return now.facts, preflight(spec, now.facts, now.observed, topology, target)


def _hgx(**options) -> FakeHost:
    fake, _ = hgx_a100(grub_defaults=DEBIAN_GRUB, **options)
    return fake


def _small(*, port_acs: tuple[int, int] = (0x001F, ACS_LINUX_DEFAULT), **host) -> FakeHost:
    """One GPU and one ConnectX under a switch with ACS, on one NUMA node."""
    fake = FakeHost(grub_defaults=DEBIAN_GRUB, **host)
    fake.numa_node(0, "0-7", 64)
    switch = fake.switch(fake.root_port(fake.root_complex(0x10, 0), 1, acs=port_acs), 2)
    fake.endpoint(switch.downstream[0], vendor_id=0x10DE, device_id=0x20B2,
                  class_code=0x030200, driver="nvidia")
    fake.endpoint(switch.downstream[1], vendor_id=0x15B3, device_id=0x101B,
                  class_code=0x020000, driver="mlx5_core", sriov_total_vfs=8,
                  sriov_vf_device=0x101C, net=["ens1np0"])
    return fake


def test_a_fresh_hgx_node_passes_and_the_new_facts_are_gathered(tmp_path):
    facts, problems = _preflight(_hgx(), tmp_path, **PER_NODE)
    assert problems == []
    assert facts.cpu_flags == ["vmx"] and facts.kvm_device is True
    assert facts.lockdown == "none" and facts.gpu_holders == []
    assert facts.kernel_version == (6, 1)


# -- 1. VT-x / AMD-V ------------------------------------------------------------------------------

def test_vt_x_off_in_the_bios_stops_a_vm_host(tmp_path):
    fake = _hgx()
    fake.cpu_flags, fake.kvm = "fpu vme de pse tsc msr pae lm", False  # VMX locked off
    _, problems = _preflight(fake, tmp_path / "vm", **PER_NODE)
    problem, = [p for p in problems if "vmx" in p]
    assert "no vmx flag in /proc/cpuinfo" in problem
    assert "Intel VT-x (\"Intel Virtualization Technology\") in the BIOS setup" in problem
    assert "`modprobe kvm_intel`" in problem
    _, bare = _preflight(fake, tmp_path / "bare", mode="baremetal", **PER_NODE)
    assert bare == []  # bare metal needs no KVM


def test_no_dev_kvm_on_amd_says_which_module_to_load(tmp_path):
    fake = _small(cpu_vendor="AuthenticAMD", iommu_table="IVRS", kvm=False)
    _, problems = _preflight(fake, tmp_path)
    problem, = [p for p in problems if "/dev/kvm" in p]
    assert "`modprobe kvm_amd`" in problem and "AMD-V (\"SVM Mode\")" in problem


def test_a_host_that_is_itself_a_vm_is_not_refused_for_lack_of_kvm(tmp_path):
    """The lab's emulated hosts: no VT-x inside the VM, guests run under TCG."""
    fake = _hgx()
    fake.cpu_flags, fake.kvm = "fpu pae lm hypervisor", False
    facts, problems = _preflight(fake, tmp_path, **PER_NODE)
    assert facts.cpu_flags == ["hypervisor"] and facts.kvm_device is False
    assert problems == []


# -- 2. the IOMMU really up -----------------------------------------------------------------------

def test_iommu_asked_for_but_not_up_means_vt_d_is_off(tmp_path):
    fake = _hgx(cmdline="BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 ro quiet intel_iommu=on iommu=pt",
                iommu_active=False)
    facts, problems = _preflight(fake, tmp_path, **PER_NODE)
    assert iommu_requested(facts) and not iommu_live(facts)
    problem, = problems
    assert problem.startswith("the kernel was booted with intel_iommu=on, but it brought up no "
                              "IOMMU (0 unit(s) in /sys/class/iommu, 0 group(s)")
    assert "Intel VT-d (\"Intel Virtualization Technology for Directed I/O\") is off in the " \
           "BIOS setup: turn it on" in problem


def test_a_first_run_before_the_iommu_argument_is_not_refused(tmp_path):
    """HostTuning adds intel_iommu=on and reboots; until then no IOMMU is expected."""
    facts, problems = _preflight(_hgx(iommu_active=False), tmp_path, **PER_NODE)
    assert not iommu_requested(facts) and not iommu_live(facts)
    assert problems == []


def test_the_amd_iommu_is_on_by_default_and_needs_no_argument(tmp_path):
    facts, problems = _preflight(
        _small(cpu_vendor="AuthenticAMD", iommu_table="IVRS", iommu_active=False),
        tmp_path / "default")
    assert iommu_requested(facts)
    problem, = problems
    assert "the AMD IOMMU is on by default (the command line has no amd_iommu=off)" in problem
    assert "AMD-Vi" in problem and "amd_iommu=on" not in problem
    off = "BOOT_IMAGE=/boot/vmlinuz ro amd_iommu=off"
    facts, problems = _preflight(
        _small(cpu_vendor="AuthenticAMD", iommu_table="IVRS", iommu_active=False, cmdline=off),
        tmp_path / "off")
    assert not iommu_requested(facts) and problems == []


@pytest.mark.parametrize("vendor, cmdline, requested", [
    ("GenuineIntel", "ro quiet", False),
    ("GenuineIntel", "ro intel_iommu=on iommu=pt", True),
    ("GenuineIntel", "ro intel-iommu=sm_on,on", True),
    ("GenuineIntel", "ro intel_iommu=on intel_iommu=off", False),
    ("GenuineIntel", "ro intel_iommu=on iommu=off", False),
    ("AuthenticAMD", "ro quiet", True),
    ("AuthenticAMD", "ro iommu=pt", True),
    ("AuthenticAMD", "ro amd_iommu=off", False),
    ("AuthenticAMD", "ro iommu=off", False),
])
def test_iommu_requested_reads_the_command_line_as_the_kernel_does(vendor, cmdline, requested):
    table = "IVRS" if vendor == "AuthenticAMD" else "DMAR"
    facts = HostFacts(cpu_vendor=vendor, cmdline=cmdline, iommu=Iommu(acpi_table=table))
    assert iommu_requested(facts) is requested
    assert not iommu_live(facts)
    assert iommu_live(facts.model_copy(update={"iommu": Iommu(acpi_table=table, units=["dmar0"],
                                                              groups=3)}))


# -- 3. kernel lockdown ---------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["integrity", "confidentiality"])
def test_a_locked_down_kernel_stops_register_writes(tmp_path, level):
    fake = _hgx()
    fake.lockdown = level
    facts, problems = _preflight(fake, tmp_path / "registers", **PER_NODE)
    assert facts.lockdown == level
    problem, = problems
    assert problem.startswith(f"the kernel is locked down ({level}, as under Secure Boot), which "
                              f"forbids writing PCI configuration space from user space, so ACS "
                              f"control, Max Read Request cannot be set")
    assert "turn off Secure Boot in the firmware setup" in problem
    assert "(acs: false, maxReadRequest: false)" in problem
    _, problems = _preflight(fake, tmp_path / "none", acs=False, maxReadRequest=False,
                             **PER_NODE)
    assert problems == []  # nothing to write: lockdown is no obstacle


# -- 4. per-node huge pages on the command line ---------------------------------------------------

def test_per_node_huge_pages_need_linux_5_16(tmp_path):
    fake = _hgx()
    fake.kernel = "5.15.0-91-generic"
    _, problems = _preflight(fake, tmp_path / "old", **PER_NODE)
    problem, = problems
    assert problem.startswith("kernel 5.15.0-91-generic reads hugepages=0:8,1:8 as 0 page(s): "
                              "per-node huge pages on the command line are understood from "
                              "Linux 5.16 on")
    assert "give hugepages.total instead" in problem and "total: 16" in problem
    _, problems = _preflight(fake, tmp_path / "total", hugepages={"total": 16})
    assert problems == []
    fake.kernel = "5.16.0-1-amd64"
    _, problems = _preflight(fake, tmp_path / "new", **PER_NODE)
    assert problems == []


# -- 5. daemons that hold the GPUs ----------------------------------------------------------------

def test_daemons_holding_the_gpus_are_named_with_the_units_to_stop(tmp_path):
    fake = _hgx()
    fake.processes = ("systemd", "nvidia-persistenced", "nv-fabricmanager", "nv-hostengine",
                      "nvidia-persistenced")
    facts, problems = _preflight(fake, tmp_path / "vfio", **PER_NODE)
    assert facts.gpu_holders == ["nv-fabricmanager", "nv-hostengine", "nvidia-persistenced"]
    problem, = problems
    assert "14 device(s) that go to vfio-pci are still bound to nvidia" in problem  # 8 + 6
    assert problem.endswith("`systemctl disable --now nvidia-fabricmanager nvidia-dcgm "
                            "nvidia-persistenced`")
    _, problems = _preflight(fake, tmp_path / "no-vfio", vfio=False, **PER_NODE)
    assert problems == []


def test_daemons_are_no_obstacle_once_the_gpus_are_on_vfio(tmp_path):
    fake = _small(processes=("nvidia-persistenced",))
    for function in fake.functions.values():
        if function.driver == "nvidia":
            function.driver = "vfio-pci"
    _, problems = _preflight(fake, tmp_path)
    assert problems == []


# -- 6. no amd_iommu=on, ever ---------------------------------------------------------------------

def test_no_message_suggests_amd_iommu_on(tmp_path):
    fake = _small(cpu_vendor="AuthenticAMD", iommu_table="IVRS", iommu_active=False,
                  cpu_flags="fpu lm", kvm=False, lockdown="integrity",
                  processes=("nvidia-persistenced",), kernel="5.10.0-30-amd64")
    _, problems = _preflight(fake, tmp_path, hugepages={"perNode": {"0": 1}})
    assert len(problems) == 5, problems
    assert not any("amd_iommu=on" in problem for problem in problems)
    _, problems = _preflight(_small(cpu_vendor="AuthenticAMD", iommu_table=None,
                                    iommu_active=False), tmp_path / "no-ivrs")
    assert problems and not any("amd_iommu=on" in problem for problem in problems)


# -- 7. an IOMMU group shared with a device that stays on the host ------------------------------

def test_a_shared_iommu_group_stops_a_vm_host_but_not_a_baremetal_one(tmp_path):
    """The root port above the switch has ACS but it is off (control 0), so everything below
    it, the GPU and the NIC included, shares the port's IOMMU group (drivers/iommu/iommu.c
    pci_device_group). Passing the GPU to a VM would take the NIC from the host; a baremetal
    host passes nothing through (vfio is false), so there the group is no obstacle."""
    fake = _small(port_acs=(0x001F, 0))
    facts, problems = _preflight(fake, tmp_path / "vm")
    gpu, nic = "0000:13:00.0", "0000:14:00.0"
    assert facts.pci[gpu].iommu_group == facts.pci[nic].iommu_group
    problem, = problems
    assert f"of {gpu} also holds {nic} (15b3:101b, driver mlx5_core)" in problem
    _, bare = _preflight(fake, tmp_path / "baremetal", mode="baremetal")
    assert bare == []
    _, no_vfio = _preflight(fake, tmp_path / "vm-no-vfio", vfio=False)
    assert no_vfio == []


# -- the gathering --------------------------------------------------------------------------------

def test_gather_reads_a_real_servers_cpuinfo(tmp_path):
    """The recorded Xeon's first processor: its `vmx flags` line is not the flags line."""
    root = _small().write(tmp_path)
    (root / "proc/cpuinfo").write_text(XEON_CPUINFO)
    facts = gather_facts(LocalHost(str(root)))
    assert facts.cpu_flags == ["vmx"] and facts.cpu_vendor == "GenuineIntel"
    assert facts.physical_address_bits == 46


def test_every_new_probe_survives_missing_files(tmp_path):
    root = _small(kvm=False, lockdown=None).write(tmp_path)
    (root / "proc/cpuinfo").unlink()
    facts = gather_facts(LocalHost(str(root)))
    assert facts.cpu_flags is None and facts.kvm_device is False
    assert facts.lockdown is None and facts.gpu_holders == []


def test_a_recording_from_before_these_probes_still_parses():
    facts = parse_gather_output(recorded("gather/lab-host-q35-switch.txt"))
    assert facts.cpu_flags is None and facts.kvm_device is None
    assert facts.lockdown is None and facts.gpu_holders is None
    assert facts.kernel_version == (6, 1) and iommu_live(facts)
