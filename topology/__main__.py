"""`python -m topology`: draw a host's topology, and its guests beside it, as DOT, SVG and PNG.

    python -m topology --facts FILE [--guest-xml FILE ...] --out DIR
                       [--gpu SELECTOR ...] [--nic SELECTOR ...] [--no-acs] [--name NAME]

FILE is what `providers/facts/gather.sh` printed on the host (`sh -s -- / < gather.sh` as
root), as recorded; leading `#` lines (a recorded file's provenance) are skipped. The GPUs and
NICs are chosen and paired as HostTuning does, with its selectors (its defaults unless given);
`--no-acs` draws a stack with `acs: false`. Each `--guest-xml` is a guest's domain XML (GpuVm's
`domainXml` output, or `virsh dumpxml NAME` on the host). Writes NAME.dot, NAME.svg and
NAME.png under DIR (NAME: the host's name unless given); SVG and PNG come from Graphviz's `dot`.

TODO: `--stack NAME`, one picture per node of a deployed stack, reading the facts and each
GpuVm's `domainXml` through the Automation API. The stack's outputs hold the domain XML but not
the host facts, so it would gather them over SSH as the providers do; it needs a deployed stack
(the lab) to prove, and is not written yet.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from providers.common.selectors import DeviceSelector
from providers.facts import parse_gather_output
from providers.facts.models import HostFacts
from providers.facts.parse import GatherOutputError
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import SelectionError, select_topology

from .domain import DomainReadError, guest_layout
from .model import Picture, picture
from .render import dot

DPI = 96  # the PNG's resolution: a whole HGX node stays readable at 100 %
SELECTORS = TypeAdapter(list[DeviceSelector])


class UsageError(Exception):
    """Something the user can fix; main prints it without a traceback."""


def read_facts(text: str) -> HostFacts:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    try:
        return parse_gather_output("".join(lines))
    except GatherOutputError as exc:
        raise UsageError(f"not a facts file (the output of providers/facts/gather.sh): "
                         f"{exc}") from None


def build(facts: HostFacts, guest_xml: list[str], gpu: list[str] | None,
          nic: list[str] | None, acs: bool) -> Picture:
    defaults = HostTuningArgs.model_fields
    try:
        gpus = SELECTORS.validate_python(gpu or defaults["gpu_selector"].default_factory())
        nics = SELECTORS.validate_python(nic or defaults["nic_selector"].default_factory())
    except ValidationError as exc:
        raise UsageError("; ".join(error["msg"] for error in exc.errors())) from None
    # select_topology reads only the selectors: a picture needs no SSH target, so the rest of
    # HostTuning's inputs stay unset.
    spec = HostTuningArgs.model_construct(gpu_selector=gpus, nic_selector=nics)
    try:
        topology = select_topology(spec, facts)
        guests = [guest_layout(xml, facts) for xml in guest_xml]
    except (SelectionError, DomainReadError) as exc:
        raise UsageError(str(exc)) from None
    return picture(facts, topology, guests, acs=acs)


def draw(dot_file: Path, dpi: int = DPI) -> list[Path]:
    """SVG and PNG beside the DOT file, by Graphviz's `dot`."""
    program = shutil.which("dot")
    if program is None:
        raise UsageError(f"Graphviz's `dot` is not installed, so only {dot_file} was written: "
                         f"install Graphviz (Debian: the graphviz package; scripts/setup "
                         f"installs it), then run this again or `dot -Tsvg -O {dot_file}`")
    made = []
    for form, extra in (("svg", []), ("png", [f"-Gdpi={dpi}"])):
        target = dot_file.with_suffix("." + form)
        done = subprocess.run([program, f"-T{form}", *extra, "-o", str(target), str(dot_file)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UsageError(f"dot could not draw {target}: {done.stderr.strip()}")
        made.append(target)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topology", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", required=True, type=Path, help="a host's gathered facts")
    parser.add_argument("--guest-xml", action="append", default=[], type=Path,
                        help="a guest's libvirt domain XML (repeat for more guests)")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write into")
    parser.add_argument("--name", help="the files' name (default: the host's name)")
    parser.add_argument("--gpu", action="append", help="HostTuning's gpuSelector (repeat)")
    parser.add_argument("--nic", action="append", help="HostTuning's nicSelector (repeat)")
    parser.add_argument("--no-acs", action="store_true", help="the stack sets acs: false")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"PNG resolution ({DPI})")
    args = parser.parse_args(argv)
    try:
        facts = read_facts(_read(args.facts))
        drawn = build(facts, [_read(path) for path in args.guest_xml], args.gpu, args.nic,
                      not args.no_acs)
        args.out.mkdir(parents=True, exist_ok=True)
        dot_file = args.out / f"{args.name or facts.hostname or 'host'}.dot"
        dot_file.write_text(dot(drawn))
        made = draw(dot_file, args.dpi)
    except UsageError as exc:
        print(f"topology: {exc}", file=sys.stderr)
        return 2
    print("topology: wrote " + ", ".join(str(path) for path in [dot_file, *made]))
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
