"""GpuVm against what the host can take: its CPU's physical address bits, QEMU's limits, its
libvirt's version (<maxphysaddr> since 8.7) and its libvirt's schema (validated here only when
the same release, else on the host before anything is written)."""

from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from lxml import etree

from providers.common import shell
from providers.errors import GpuVmError
from providers.facts import gather_facts, parse_gather_output
from providers.gpu_vm.observe import VmObservations, owned_fields, parse_observations
from providers.gpu_vm.placement import place
from providers.gpu_vm.plan import drift
from providers.gpu_vm.preflight import (
    QEMU_DEFAULT_PHYS_BITS,
    QEMU_MAX_PHYS_BITS,
    address_bits,
    phys_bits_mode,
    preflight,
)
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.target import desired_domain, domain_spec
from providers.gpu_vm.xml.domain import domain, render
from providers.gpu_vm.xml.schema import (
    SCHEMAS,
    SchemaError,
    local_version,
    matches_host,
    validate,
    validate_for_host,
)
from providers.host import LocalHost
from tests.support.fakehost import FakeHost
from tests.support.hgx import hgx_a100
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KERNEL = {"kernel": "/usr/local/share/vela-guest/vmlinux",
          "initrd": "/usr/local/share/vela-guest/initrd.cpio"}
# An Ice Lake-SP Xeon, the HGX A100 reference design's CPU: "46 bits physical, 57 bits virtual".
ICE_LAKE_BITS = 46
DEBIAN_12 = (9, 0, 0)  # libvirt on Debian 12: <maxphysaddr> emulate only (no limit=)


def _hgx_facts(phys_bits: int | None):
    host, layout = hgx_a100(nic_vfs=2, hugepages_1g_per_node=512)
    host.phys_bits = phys_bits
    return gather_facts(LocalHost(str(host.write(tempfile.mkdtemp(prefix="hgx-"))))), layout


@pytest.fixture(scope="module")
def hgx():
    return _hgx_facts(ICE_LAKE_BITS)


@pytest.fixture(scope="module")
def lab():
    return parse_gather_output(recorded("gather/lab-host-q35-switch.txt"))


def _spec(**values) -> GpuVmArgs:
    return GpuVmArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY, **values})


def _hgx_vm(**values) -> GpuVmArgs:
    return _spec(name="hgx-vm", vcpus=64, memoryGib=512, gpus=8,
                 image={"path": "/var/lib/libvirt/images/ubuntu-22.04.qcow2"}, **values)


def _lab_vm(**values) -> GpuVmArgs:
    return _spec(name="lab-vm", vcpus=2, memoryGib=2, gpus=2, kernelBoot=KERNEL,
                 domainType="qemu", cpuModel="qemu64", gpuSelector=["1af4:1110"],
                 reservedCpus=0, **values)


def _ready(**values) -> VmObservations:
    """A host where everything else preflight checks is in order."""
    return VmObservations(hugetlbfs={"/dev/hugepages1G": "rw,relatime,pagesize=1024M"},
                          image_format="qcow2", network_active=True, **values)


# -- the host CPU's bits, from /proc/cpuinfo ------------------------------------------------------

def test_gathered_from_the_address_sizes_line_and_unknown_without_it(tmp_path):
    host = FakeHost(phys_bits=ICE_LAKE_BITS)
    host.numa_node(0, "0-3", 4, {})
    assert gather_facts(LocalHost(str(host.write(tmp_path / "with")))).physical_address_bits \
        == ICE_LAKE_BITS
    host.phys_bits = None
    assert gather_facts(LocalHost(str(host.write(tmp_path / "without")))) \
        .physical_address_bits is None


# -- which <maxphysaddr> the host's libvirt gets --------------------------------------------------

@pytest.mark.parametrize("domain_type, cpu_model, version, mode", [
    ("kvm", "host-passthrough", (9, 3, 0), "passthrough"),  # limit= since 9.3
    ("kvm", "host-passthrough", DEBIAN_12, "emulate"),
    ("kvm", "Skylake-Server", (10, 0, 0), "emulate"),  # passthrough is for host CPUs
    ("qemu", "qemu64", (10, 0, 0), "emulate"),
    ("kvm", "host-passthrough", (8, 6, 0), "none"),  # no <maxphysaddr> before 8.7
    ("qemu", "qemu64", (8, 0, 0), "none"),
    ("kvm", "host-passthrough", None, "emulate"),  # unknown: the host's define decides
])
def test_the_mode_follows_the_hosts_libvirt(domain_type, cpu_model, version, mode):
    assert phys_bits_mode(domain_type, cpu_model, version) == mode


def test_without_maxphysaddr_the_xml_has_none_and_still_validates(hgx):
    facts, _ = hgx
    spec = _hgx_vm()
    layout = place(spec, facts, {})
    observed = _ready(libvirt_version=(8, 6, 0))
    assert address_bits(spec, facts, observed, layout) == []  # host-passthrough: host's bits
    element = domain(domain_spec(spec, observed, None), layout)
    assert element.find("cpu/maxphysaddr") is None
    validate(element)
    passthrough = domain(domain_spec(spec, _ready(libvirt_version=(9, 3, 0)), None), layout)
    assert passthrough.find("cpu/maxphysaddr").attrib == {
        "mode": "passthrough", "limit": str(layout.phys_bits)}


# -- bits against the host CPU (kvm) ------------------------------------------------------------

def test_a_guest_that_fits_the_host_cpu_passes(hgx):
    facts, _ = hgx
    spec = _hgx_vm()
    layout = place(spec, facts, {})
    assert layout.phys_bits <= ICE_LAKE_BITS
    for version in (DEBIAN_12, (9, 3, 0)):
        assert address_bits(spec, facts, _ready(libvirt_version=version), layout) == []


def test_more_bits_than_the_host_cpu_has_is_refused_with_the_fix(hgx):
    facts, _ = hgx
    spec = _hgx_vm()
    layout = place(spec, facts, {})
    small = facts.model_copy(update={"physical_address_bits": layout.phys_bits - 1})
    for version in (DEBIAN_12, (9, 3, 0)):  # emulate, and passthrough's limit alike
        problem, = address_bits(spec, small, _ready(libvirt_version=version), layout)
        assert problem == (f"the guest's RAM plus passed-through BARs need {layout.phys_bits} "
                           f"physical address bits, more than the {layout.phys_bits - 1} the "
                           f"host CPU has (/proc/cpuinfo address sizes): give each VM "
                           f"less memory or fewer GPUs (memoryGib, gpus)")
    assert problem in preflight(spec, small, _ready(libvirt_version=DEBIAN_12), layout, new=True)
    unknown = facts.model_copy(update={"physical_address_bits": None})
    assert address_bits(spec, unknown, _ready(libvirt_version=DEBIAN_12), layout) == []


def test_the_refusal_names_the_host_and_changes_nothing(hgx):
    facts, _ = hgx
    spec = _hgx_vm()
    layout = place(spec, facts, {})
    small = facts.model_copy(update={"physical_address_bits": layout.phys_bits - 1})
    with pytest.raises(GpuVmError, match=r"^hgx-a100-01: the guest's RAM plus passed-through "
                                         r"BARs need .*Nothing was changed\.$"):
        desired_domain("hgx-a100-01", spec, small, _ready(libvirt_version=DEBIAN_12))


# -- bits under TCG (domainType qemu) -----------------------------------------------------------

def test_tcg_takes_up_to_qemus_52_and_libvirt_caps_emulate_at_the_host_cpu(lab):
    spec = _lab_vm()
    layout = place(spec, lab, {})
    assert lab.physical_address_bits is None  # recorded before gathering read the line
    observed = _ready(libvirt_version=DEBIAN_12)
    assert address_bits(spec, lab, observed, layout) == []
    at_most = layout.model_copy(update={"phys_bits": QEMU_MAX_PHYS_BITS})
    assert address_bits(spec, lab, observed, at_most) == []
    beyond = layout.model_copy(update={"phys_bits": QEMU_MAX_PHYS_BITS + 1})
    problem, = address_bits(spec, lab, observed, beyond)
    assert f"more than the {QEMU_MAX_PHYS_BITS} QEMU's TCG (domainType qemu) takes at most:" \
        in problem
    # The host CPU does not limit a TCG guest, but libvirt's emulate mode refuses more bits
    # than it has (qemuValidateDomainDefCpu), whatever the domain type.
    host = lab.model_copy(update={"physical_address_bits": 44})
    problem, = address_bits(spec, host, observed, layout.model_copy(update={"phys_bits": 45}))
    assert "more than the 44 of the host CPU, the most libvirt takes for a domain of any " \
           "type" in problem


def test_before_libvirt_8_7_a_named_model_keeps_qemus_default(lab, hgx):
    spec = _lab_vm()
    layout = place(spec, lab, {})
    old = _ready(libvirt_version=(8, 6, 0))
    assert layout.phys_bits <= QEMU_DEFAULT_PHYS_BITS
    assert address_bits(spec, lab, old, layout) == []  # the supported fallback
    element = domain(domain_spec(spec, old, None), layout)
    assert element.find("cpu/maxphysaddr") is None
    bigger = layout.model_copy(update={"phys_bits": QEMU_DEFAULT_PHYS_BITS + 1})
    problem, = address_bits(spec, lab, old, bigger)
    assert (f"more than the {QEMU_DEFAULT_PHYS_BITS} QEMU gives a qemu64 CPU by default, as "
            f"libvirt 8.6.0 on this host predates <maxphysaddr> (8.7): upgrade libvirt on the "
            f"host to 8.7 or later, or give each VM less memory") in problem
    # Under KVM a named model gets the same default; host-passthrough is the way out there.
    facts, _ = hgx
    named = _hgx_vm(cpuModel="Icelake-Server")
    placed = place(named, facts, {})
    assert placed.phys_bits > QEMU_DEFAULT_PHYS_BITS
    problem, = address_bits(named, facts, old, placed)
    assert "or use cpuModel host-passthrough (which gets the host CPU's bits)" in problem


# -- the host's libvirt schema ------------------------------------------------------------------

def test_the_schemas_here_stand_for_the_hosts_only_at_the_same_release():
    here = local_version()
    assert here is not None and matches_host(here)  # libvirt-python is a requirement
    assert matches_host(here[:2]) == (here[2] == 0)  # "9.0" is 9.0.0
    assert not matches_host((here[0], here[1] + 1, 0))
    assert not matches_host(None)
    assert not matches_host(here, directory=Path("/nonexistent"))


def _broken() -> etree._Element:
    return etree.fromstring("<domain type='kvm'><name>x</name><nonsense/></domain>")


def test_validated_here_only_for_the_same_release_else_the_host_must_validate():
    here = local_version()
    with pytest.raises(SchemaError, match="does not validate"):
        validate_for_host(_broken(), here, host_validates=False)
    other = (here[0], here[1] + 1, 0)
    validate_for_host(_broken(), other, host_validates=True)  # left to vela_vm_validate
    validate_for_host(_broken(), other, host_validates=None)  # not observed: define decides
    with pytest.raises(SchemaError) as refused:
        validate_for_host(_broken(), other, host_validates=False)
    release = ".".join(map(str, other))
    assert f"the host runs libvirt {release}" in str(refused.value)
    assert "install libvirt-clients and libxml2-utils on the host" in str(refused.value)


def test_the_host_says_whether_it_can_validate():
    text = "libvirt\t-\tversion\t9.0.0\nlibvirt\t-\tvalidator\tyes\n"
    observed = parse_observations(text)
    assert observed.libvirt_version == (9, 0, 0) and observed.validator is True
    assert parse_observations("libvirt\t-\tvalidator\tno\n").validator is False
    assert parse_observations("").validator is None


# virt-xml-validate as libvirt's tools/virt-xml-validate.in has it: `virt-xml-validate FILE|-
# TYPE` copies "-" (stdin) to a temporary file and runs `xmllint --noout --relaxng
# /usr/share/libvirt/schemas/TYPE.rng FILE`, whose status it exits with (xmllint: 3 on a
# validity error, after "FILE:LINE: element E: Relax-NG validity error : ..." lines and
# "FILE fails to validate"). lxml's RelaxNG (libxml2's, as xmllint's) stands in for xmllint.
VALIDATE_STANDIN = r'''#!/bin/sh
[ "$1" = - ] || { echo "stand-in reads stdin only" >&2; exit 1; }
exec "$PYTHON" -c '
import sys
from lxml import etree
schema = etree.RelaxNG(etree.parse(sys.argv[1]))
if schema.validate(etree.parse(sys.stdin.buffer)):
    print("- validates", file=sys.stderr)
    sys.exit(0)
for error in schema.error_log:
    print(f"-:{error.line}: Relax-NG validity error : {error.message}", file=sys.stderr)
print("- fails to validate", file=sys.stderr)
sys.exit(3)
' "$SCHEMAS/$2.rng"
'''


def _validate_on_host(tmp_path: Path, xml: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "virt-xml-validate").write_text(VALIDATE_STANDIN)
    (bin_dir / "virt-xml-validate").chmod(0o755)
    script = shell.script([shell.call("vela_vm_validate", "vm",
                                      base64.b64encode(xml.encode()).decode())])
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=tmp_path, env={
        "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": sys.executable, "SCHEMAS": str(SCHEMAS)})


def test_vela_vm_validate_checks_the_xml_on_the_host_and_writes_nothing(tmp_path, lab):
    spec = _lab_vm()
    xml = render(domain(domain_spec(spec, _ready(libvirt_version=DEBIAN_12), None),
                        place(spec, lab, {})))
    good = _validate_on_host(tmp_path, xml)
    assert good.returncode == 0, good.stderr
    bad = _validate_on_host(tmp_path, xml.replace("<pm>", "<pm><hibernate/>"))
    assert bad.returncode == 1
    assert bad.stderr.startswith("vela: domain vm does not validate against this host's libvirt "
                                 "schema, so nothing was changed (virt-xml-validate): -:")
    assert "- fails to validate" in bad.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bin"]


# -- clock and power management as libvirt keeps them -------------------------------------------

def test_clock_and_pm_are_owned_so_a_domain_without_them_is_redefined(hgx):
    facts, _ = hgx
    spec = _hgx_vm()
    xml = render(domain(domain_spec(spec, _ready(libvirt_version=DEBIAN_12), None),
                        place(spec, facts, {})))
    fields = owned_fields(xml)
    assert fields["clock"] == ("utc", [("hpet", None, "no"), ("pit", "delay", None),
                                       ("rtc", "catchup", None)])
    assert fields["pm"] == [("suspend-to-disk", "no"), ("suspend-to-mem", "no")]
    root = etree.fromstring(xml.encode())
    for timer in root.findall("clock/timer"):
        timer.getparent().remove(timer)
    root.remove(root.find("pm"))
    older = etree.tostring(root, encoding="unicode")
    assert [change.split(":")[0] for change in drift(xml, older)] == ["clock", "pm"]


def test_pcie_root_carries_ats_like_every_controller_unless_turned_off(lab):
    spec = _lab_vm()
    layout = place(spec, lab, {})
    on = domain(domain_spec(spec, _ready(libvirt_version=DEBIAN_12), None), layout)
    root_port = on.find("devices/controller[@model='pcie-root']")
    assert root_port.find("driver").attrib == {"ats": "on"}
    assert all(controller.find("driver") is not None
               for controller in on.iterfind("devices/controller[@type='pci']"))
    validate(on)
    off = domain(domain_spec(spec, _ready(libvirt_version=DEBIAN_12), None)
                 .model_copy(update={"ats_on_controllers": False}), layout)
    assert off.find("devices/controller[@model='pcie-root']/driver") is None
