"""The example pictures in docs/topology: their inputs are what the fixtures give now, and
their DOT text is what `python -m topology` draws from those inputs now.

Run as a program to make them again (inputs, DOT, SVG and PNG; Graphviz needed):
    .venv/bin/python -m tests.unit.test_topology_docs
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from providers.facts import gather_facts, run_gather
from providers.gpu_vm.placement import place
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.xml.domain import domain, render
from providers.gpu_vm.xml.spec import DomainSpec
from providers.host import LocalHost
from tests.support.hgx import hgx_a100
from tests.support.recorded import RECORDED
from topology.__main__ import build, main, read_facts
from topology.render import dot

DOCS = Path(__file__).resolve().parents[2] / "docs" / "topology"
LAB_FACTS = RECORDED / "gather" / "lab-host-q35-switch.txt"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
LAB = {"gpu": ["1af4:1110"], "nic": ["8086:10c9"]}  # as Pulumi.dev.yaml selects them
HGX_HEADER = """\
# source: tests/support/hgx.py hgx_a100(nic_vfs=2, hugepages_1g_per_node=64), the fake HGX A100
#   host of the tests (not a recording of a real one)
# command: providers/facts/gather.sh over the fake host's root, whose path is written as / (as
#   on a host); made by `python -m tests.unit.test_topology_docs`
"""


def _vm(**values) -> GpuVmArgs:
    return GpuVmArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                     "image": {"path": "/base.qcow2"}, **values})


def _xml(name: str, layout, **spec) -> str:
    values = {"domain_type": "kvm", "cpu_model": "host-passthrough",
              "phys_bits_mode": "passthrough", "hugepage_kib": 1048576, "firmware": "efi",
              **spec}
    return render(domain(DomainSpec(name=name, **values), layout))


def example_inputs() -> dict[str, str]:
    """File name under docs/topology -> content: the HGX host's facts and a whole-node guest
    on it (all 8 GPUs, the NVSwitches, a VF of each GPU switch's NIC); two guests on the
    recorded lab host, one a NUMA node as the dev stack has them (the recording has no VFs)."""
    host, layout = hgx_a100(nic_vfs=2, hugepages_1g_per_node=64)
    with tempfile.TemporaryDirectory() as scratch:
        root = str(host.write(Path(scratch)))
        text = run_gather(LocalHost(root)).replace(root.rstrip("/") + "/", "/")
        facts = gather_facts(LocalHost(root))
    vfs = [{"address": facts.device(group.nic_pfs[0]).virtfns[0].address}
           for group in layout.switches]
    whole = place(_vm(name="vm0", gpus=len(layout.gpus), vfs=vfs, vcpus=32, memoryGib=128),
                  facts, {})
    files = {"hgx-a100.facts.txt": HGX_HEADER + text,
             "hgx-a100-vm0.xml": _xml("vm0", whole)}
    lab = read_facts(LAB_FACTS.read_text())
    taken: dict[str, str] = {}
    pinned: dict[int, str] = {}
    for index in range(2):
        name = f"vm{index}"
        placed = place(_vm(name=name, gpus=1, gpuSelector=LAB["gpu"], vcpus=1, memoryGib=1,
                           reservedCpus=0, hostShare={"index": index, "count": 2}),
                       lab, taken, pinned=pinned)
        taken.update({device.host_address: name for device in placed.devices})
        pinned.update({cpu: name for cell in placed.cells for cpu in cell.host_cpus})
        files[f"lab-host-{name}.xml"] = _xml(name, placed, domain_type="qemu",
                                             cpu_model="qemu64", phys_bits_mode="emulate")
    return files


@dataclass
class Example:
    facts: Path
    guests: list[Path]
    gpu: list[str] | None = None  # None: HostTuning's default selectors
    nic: list[str] | None = None
    acs: bool = True

    def arguments(self) -> list[str]:
        """The command's arguments for this picture (besides --out and --name)."""
        return (["--facts", str(self.facts)]
                + [part for guest in self.guests for part in ("--guest-xml", str(guest))]
                + [part for gpu in self.gpu or [] for part in ("--gpu", gpu)]
                + [part for nic in self.nic or [] for part in ("--nic", nic)]
                + ([] if self.acs else ["--no-acs"]))


EXAMPLES = {
    "hgx-a100": Example(DOCS / "hgx-a100.facts.txt", [DOCS / "hgx-a100-vm0.xml"]),
    # The dev stack's settings: its selectors, and acs: false.
    "lab-host": Example(LAB_FACTS, [DOCS / "lab-host-vm0.xml", DOCS / "lab-host-vm1.xml"],
                        gpu=LAB["gpu"], nic=LAB["nic"], acs=False),
}


def test_the_example_inputs_are_what_the_fixtures_give():
    for name, content in example_inputs().items():
        committed = (DOCS / name).read_text()
        if name.endswith(".facts.txt"):
            # As facts: gather.sh lists sysfs in directory order, which a file system may
            # change; the facts it gives do not.
            same = read_facts(committed) == read_facts(content)
        else:
            same = committed == content
        assert same, f"docs/topology/{name} is stale: python -m tests.unit.test_topology_docs"


def test_the_example_pictures_are_what_the_command_draws():
    for name, example in EXAMPLES.items():
        drawn = build(read_facts(example.facts.read_text()),
                      [guest.read_text() for guest in example.guests], example.gpu,
                      example.nic, example.acs)
        assert (DOCS / f"{name}.dot").read_text() == dot(drawn), \
            f"docs/topology/{name}.dot is stale: python -m tests.unit.test_topology_docs"
        for suffix in (".svg", ".png"):
            assert (DOCS / f"{name}{suffix}").stat().st_size > 0


if __name__ == "__main__":
    DOCS.mkdir(parents=True, exist_ok=True)
    for file_name, text in example_inputs().items():
        (DOCS / file_name).write_text(text)
    for picture_name, picture in EXAMPLES.items():
        if main([*picture.arguments(), "--out", str(DOCS), "--name", picture_name]):
            raise SystemExit(1)
