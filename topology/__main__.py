"""`python -m topology`: draw a host's topology, and its guests beside it, as DOT, SVG and PNG.

    python -m topology --facts FILE [--guest-xml FILE ...] --out DIR
                       [--gpu SELECTOR ...] [--nic SELECTOR ...] [--no-acs] [--name NAME]
    python -m topology --stack NAME --out DIR [--key FILE]
                       [--gpu SELECTOR ...] [--nic SELECTOR ...] [--no-acs]

FILE is what `providers/facts/gather.sh` printed on the host (`sh -s -- / < gather.sh` as
root), as recorded; leading `#` lines (a recorded file's provenance) are skipped. The GPUs and
NICs are chosen and paired as HostTuning does, with its selectors (its defaults unless given);
`--no-acs` draws a stack with `acs: false`. Each `--guest-xml` is a guest's domain XML (GpuVm's
`domainXml` output, or `virsh dumpxml NAME` on the host). Writes NAME.dot, NAME.svg and
NAME.png under DIR (NAME: the host's name unless given); SVG and PNG come from Graphviz's `dot`.

`--stack NAME` draws each node of a deployed stack, NODE.dot/.svg/.png (topology/stack.py): the
stack's outputs and config are read as `python -m acceptance` reads them (the Automation API,
with the backend and passphrase of `scripts/up`); each host's facts are gathered over SSH as the
providers gather them (address, port, user and pinned host key from `vela:nodes` or the lab's
inventory file), and each of its guests' domain XML comes from the stack's outputs when it
exports them (`domainXml`), else from `virsh dumpxml` on the host. Selectors and `acs` are the
stack's own for each node unless --gpu, --nic or --no-acs are given. The key that logs in is
--key, else the stack's `vela:sshPrivateKey` (the providers' key), else ~/.ssh/id_ed25519. A
node that cannot be drawn is reported (which host, what failed, what to do) and the others are
drawn; the exit status is then 1 (2 when the stack itself cannot be read or is not
deployed, or the key cannot be loaded).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from components.deployed import Deployed, read_deployed
from providers.common.selectors import DeviceSelector
from providers.errors import ClientKeyError, HostError
from providers.facts import parse_gather_output
from providers.facts.models import HostFacts
from providers.facts.parse import GatherOutputError
from providers.host import ClientKey, Host, close_all_connections
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import SelectionError, select_topology

from .domain import DomainReadError, guest_layout
from .model import Picture, picture
from .render import dot
from .stack import (
    DEFAULT_KEY,
    KEY,
    PASSPHRASE,
    StackNode,
    client_key,
    gather,
    stack_nodes_to_draw,
)
from .stack import connect as connect_node

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


def main(argv: list[str] | None = None, *, read: Callable[[str], Deployed] | None = None,
         connect: Callable[[StackNode, ClientKey], Host] | None = None) -> int:
    """`read` (the stack's outputs and config) and `connect` (a node's host) are for tests: by
    default the Automation API and the providers' pinned SSH."""
    parser = argparse.ArgumentParser(prog="python -m topology", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--facts", type=Path, help="a host's gathered facts")
    source.add_argument("--stack", help="a deployed stack: one picture per node, over SSH")
    parser.add_argument("--guest-xml", action="append", default=[], type=Path,
                        help="a guest's libvirt domain XML (repeat for more guests)")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write into")
    parser.add_argument("--name", help="the files' name (default: the host's name)")
    parser.add_argument("--gpu", action="append", help="HostTuning's gpuSelector (repeat)")
    parser.add_argument("--nic", action="append", help="HostTuning's nicSelector (repeat)")
    parser.add_argument("--no-acs", action="store_true", help="the stack sets acs: false")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"PNG resolution ({DPI})")
    parser.add_argument("--key", help="with --stack: the private key that logs in to the hosts "
                        f"(default: the stack's vela:sshPrivateKey, else {DEFAULT_KEY})")
    args = parser.parse_args(argv)
    if args.stack is not None:
        if args.guest_xml or args.name:
            parser.error("--guest-xml and --name go with --facts: --stack reads each node's "
                         "guests itself and names each picture after its node")
        return draw_stack(args, read, connect)
    if args.key:
        parser.error("--key goes with --stack (a facts file needs no SSH)")
    try:
        facts = read_facts(_read(args.facts))
        drawn = build(facts, [_read(path) for path in args.guest_xml], args.gpu, args.nic,
                      not args.no_acs)
        made = write(drawn, args.out, args.name or facts.hostname or "host", args.dpi)
    except UsageError as exc:
        print(f"topology: {exc}", file=sys.stderr)
        return 2
    print("topology: wrote " + ", ".join(str(path) for path in made))
    return 0


def write(drawn: Picture, out: Path, name: str, dpi: int) -> list[Path]:
    """NAME.dot under `out`, then its SVG and PNG; the files written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        dot_file = out / f"{name}.dot"
        dot_file.write_text(dot(drawn))
    except OSError as exc:
        raise UsageError(f"cannot write into {out}: {exc.strerror}") from None
    return [dot_file, *draw(dot_file, dpi)]


def draw_stack(args: argparse.Namespace, read: Callable[[str], Deployed] | None,
               connect: Callable[[StackNode, ClientKey], Host] | None) -> int:
    """One picture per node of the stack; a node that cannot be drawn is said why, and the
    others are drawn. 0: all drawn; 1: some node or guest not drawn; 2: no stack to draw."""
    if read is None:
        def read(name: str) -> Deployed:
            return read_deployed(name, secrets=(KEY, PASSPHRASE))
    connect = connect or connect_node
    try:
        deployed = read(args.stack)
        nodes = stack_nodes_to_draw(deployed.name, deployed.outputs, deployed.config)
        key = client_key(args.key, {**deployed.config, **deployed.secrets})
        key.load()
    except ClientKeyError as exc:
        print(f"topology: {exc}: give the key that logs in to the stack's hosts with --key FILE "
              f"(by default the stack's vela:sshPrivateKey, else {DEFAULT_KEY})",
              file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"topology: {exc}", file=sys.stderr)
        return 2
    not_drawn: list[str] = []
    partly: list[str] = []  # drawn without a guest that could not be read
    try:
        for node in nodes:
            try:
                found = gather(node, connect(node, key))
                drawn = build(found.facts, found.guests, args.gpu or node.gpu,
                              args.nic or node.nic, node.acs and not args.no_acs)
                made = write(drawn, args.out, node.name, args.dpi)
            except HostError as exc:
                print(f"topology: {exc}", file=sys.stderr)
                not_drawn.append(node.name)
                continue
            except UsageError as exc:
                print(f"topology: {node.where}: {exc}", file=sys.stderr)
                not_drawn.append(node.name)
                continue
            for problem in found.problems:
                print(f"topology: {problem}", file=sys.stderr)
            if found.problems:
                partly.append(node.name)
            print("topology: wrote " + ", ".join(str(path) for path in made))
    finally:
        close_all_connections()
    if not_drawn or partly:
        said = [f"{len(not_drawn)} of {len(nodes)} nodes not drawn ({', '.join(not_drawn)})"
                if not_drawn else "",
                f"drawn without some guests: {', '.join(partly)}" if partly else ""]
        print(f"topology: stack {deployed.name}: {'; '.join(filter(None, said))}; the "
              f"messages above say why and what to do", file=sys.stderr)
        return 1
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
