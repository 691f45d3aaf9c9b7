"""Hardware facts of a hypervisor host, gathered in one round trip.

`gather_facts(host)` runs `gather.sh` through `Host.run_script` (one exec, over SSH or locally)
and parses its output with the pure functions in `parse`. Providers plan from the `HostFacts` it
returns and never read the host piecemeal.
"""

from __future__ import annotations

from importlib import resources

from ..errors import FactsError
from ..host import Host
from .models import HostFacts, HugePagePool, Iommu, NumaNode, PciDevice, VirtualFunction
from .parse import GatherOutputError, parse_gather_output

GATHER_SCRIPT = resources.files(__package__).joinpath("gather.sh").read_text()


END_MARKER = "emit meta - end ok\n"


def run_gather(host: Host, extra: str = "", *, timeout: float = 120.0) -> str:
    """Run gather.sh plus `extra` (more sections, which may use its `emit` and `first_line`
    helpers and `$R`, the sysroot) as one remote command; return the raw records."""
    script = GATHER_SCRIPT + "\n" + extra + "\n" + END_MARKER
    return host.run_script(script, [host.sysroot], timeout=timeout).text


def parse_facts(host: Host, text: str) -> HostFacts:
    try:
        return parse_gather_output(text)
    except GatherOutputError as exc:
        raise FactsError(host.name, f"cannot read hardware facts: {exc}") from exc


def gather_facts(host: Host, *, timeout: float = 120.0) -> HostFacts:
    """Everything vela needs to know about `host`, from one remote command."""
    return parse_facts(host, run_gather(host, timeout=timeout))


__all__ = ["GATHER_SCRIPT", "HostFacts", "HugePagePool", "Iommu", "NumaNode", "PciDevice",
           "VirtualFunction", "gather_facts", "parse_facts", "parse_gather_output",
           "run_gather"]
