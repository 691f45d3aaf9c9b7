"""The acceptance benchmark of a deployed stack: one command after `pulumi up`.

    .venv/bin/python -m acceptance --stack dev --record-baseline baseline.json
        (on the nodes as bare metal: the stack deployed with `vela:mode: baremetal`)
    .venv/bin/python -m acceptance --stack dev --baseline baseline.json [--threshold 0.05]
        [--min-size 1048576] [--out acceptance-out] [--plan auto|gpu|network] [--key FILE]
        [--test-network CIDR] [--jump]

Writes into --out: result.json (what was measured), and with a baseline verdict.json,
table.txt and acceptance.png/.svg (bus bandwidth per size, VM against baseline). Exit status:
0 when every gated point reaches (1 - threshold) of the baseline, 1 when one does not, 2 when
the run could not be compared (no baseline, an error). The plan is `network` (iperf3) on the
lab, which has no GPUs, and `gpu` (nccl-tests, CUDA samples) elsewhere.

A VM's SSH host key is read from its console log on its host (as cloud-init prints it there),
through the host's pinned key; `--jump` reaches the VMs through their hosts (always so on the
lab, whose guests are on each host's private network). `--test-network CIDR` gives every
benchmark interface an address of CIDR first, for a fabric without addressing (the lab's).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from providers.errors import VelaError

from .compare import (
    DEFAULT_MIN_SIZE,
    DEFAULT_THRESHOLD,
    RunResult,
    compare,
    read_result,
    table,
    write_json,
)
from .plan import Machine, Options, Runner, execute, gpu_plan, network_plan
from .stack import StackInfo


class SshRunner:  # pragma: no cover - needs machines to log in to
    """Runs each command over SSH (providers/host: `SshHost`, whose `run` quotes every word).
    A VM's host keys come from its console log on its hypervisor, read once per VM."""

    def __init__(self, key: str, known_hosts: str | None, connect_timeout: float = 15.0) -> None:
        from providers.host.keys import KeyFile

        self.key = KeyFile(key)
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self._console_keys: dict[str, tuple[str, ...]] = {}

    def run(self, machine: Machine, argv: Sequence[str], *, timeout: float,
            stdin: bytes | None = None) -> str:
        return self.host(machine).run(list(argv), timeout=timeout, stdin=stdin).text

    def host(self, machine: Machine, *, sudo: bool | None = False):
        """The machine's SshHost; `sudo=None`: through sudo unless it logs in as root."""
        from providers.host.ssh import SshHost

        keys = machine.host_keys or self.console_keys(machine)
        via = self.host(machine.hypervisor) if machine.jump and machine.hypervisor else None
        return SshHost(machine.address, client_key=self.key, port=machine.port,
                       user=machine.user, pinned_host_keys=keys,
                       known_hosts=None if keys else self.known_hosts,
                       name=machine.name, sudo=sudo, via=via,
                       connect_timeout=self.connect_timeout)

    def console_keys(self, machine: Machine) -> tuple[str, ...]:
        from .hostkeys import console_host_keys

        if machine.hypervisor is None or not machine.console_log:
            return ()
        if machine.name not in self._console_keys:
            # libvirt's log directory is root's: read it as root (sudo for another user)
            host = self.host(machine.hypervisor, sudo=None)
            text = host.run(["cat", machine.console_log], timeout=60).text
            keys = tuple(console_host_keys(text))
            if not keys:
                raise ValueError(
                    f"{machine.name} printed no SSH host keys on its console "
                    f"({machine.console_log} on {machine.hypervisor.name}): wait until it has "
                    "booted, or add its key to your known_hosts file (--known-hosts)")
            self._console_keys[machine.name] = keys
        return self._console_keys[machine.name]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m acceptance",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--baseline", type=Path, help="a result recorded on bare metal")
    which.add_argument("--record-baseline", type=Path,
                       help="run on the stack's hosts as bare metal and keep the result here")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="allowed shortfall against the baseline (0.05: 5%%)")
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                        help="smallest nccl-tests message size (bytes) the verdict gates")
    parser.add_argument("--out", type=Path, default=Path("acceptance-out"))
    parser.add_argument("--plan", choices=["auto", "gpu", "network"], default="auto")
    parser.add_argument("--key", default=os.path.expanduser("~/.ssh/id_ed25519"),
                        help="private key that logs in to the VMs (and hosts)")
    parser.add_argument("--known-hosts", default=os.path.expanduser("~/.ssh/known_hosts"))
    parser.add_argument("--max-bytes", default="8G", help="nccl-tests -e")
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 --time (network plan)")
    parser.add_argument("--test-network", metavar="CIDR",
                        help="address each benchmark interface from CIDR first (a fabric with "
                             "no addresses, as the lab's)")
    parser.add_argument("--connect-timeout", type=float, default=15.0,
                        help="seconds an SSH login may take (a nested lab guest under TCG: 150)")
    parser.add_argument("--only", metavar="NAMES",
                        help="benchmark only these machines (comma-separated VM or host names)")
    parser.add_argument("--interface",
                        help="benchmark over this interface (a netdev name or a PCI address) "
                             "instead of NCCL_SOCKET_IFNAME / the first NIC port")
    parser.add_argument("--jump", action="store_true",
                        help="reach the VMs through their hosts (always on the lab)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, runner: Runner | None = None,
         read: Callable[[str], StackInfo] | None = None) -> int:
    options = parse_args(argv)
    if not 0 <= options.threshold < 1:
        print(f"acceptance: --threshold {options.threshold} is not a fraction between 0 and 1 "
              "(0.05 means 5%)", file=sys.stderr)
        return 2
    try:
        baseline = read_result(options.baseline) if options.baseline else None
        if read is None:
            from .stack import read_stack as read
        _network_apart(options.test_network, baseline)
        info = read(options.stack)
        if options.jump:
            info = dataclasses.replace(info, vms=[
                dataclasses.replace(vm, jump=vm.hypervisor is not None) for vm in info.vms])
        result = _run(options, info, runner or SshRunner(options.key, options.known_hosts,
                                                            options.connect_timeout))
    except (ValueError, VelaError) as exc:  # bad input, a host that failed: a message
        print(f"acceptance: {exc}", file=sys.stderr)
        return 2
    write_json(options.out / "result.json", result)
    if options.record_baseline:
        write_json(options.record_baseline, result)
        print(f"acceptance: baseline recorded in {options.record_baseline}")
        return 0
    if baseline is None:
        print(f"acceptance: measured, but nothing to compare with (results in "
              f"{options.out / 'result.json'}): pass --baseline FILE, recorded earlier with "
              "--record-baseline on the same nodes as bare metal", file=sys.stderr)
        return 2
    return _verdict(options, result, baseline)


def _run(options: argparse.Namespace, info: StackInfo, runner: Runner) -> RunResult:
    plan = options.plan if options.plan != "auto" else ("network" if info.lab else "gpu")
    baremetal = options.record_baseline is not None
    machines = info.hosts if baremetal else info.vms
    if baremetal and not machines:
        raise ValueError(f"stack {info.name} names no hosts (vela:nodes or vela:inventoryFile) "
                         "to record a bare-metal baseline on")
    machines = _chosen(machines, options.only, options.interface)
    settings = Options(max_bytes=options.max_bytes, test_network=options.test_network,
                       iperf_seconds=options.seconds)
    hostfile = "".join(f"{m.address} slots={m.slots}\n" for m in machines) if baremetal \
        else info.hostfile
    steps = gpu_plan(machines, hostfile, settings) if plan == "gpu" \
        else network_plan(machines, settings)
    result = execute(steps, runner, stack=info.name, plan=plan,
                     environment="baremetal" if baremetal else "vm", timeout=settings.timeout)
    return result.model_copy(update={"test_network": options.test_network})


def _network_apart(cidr: str | None, baseline: RunResult | None) -> None:
    """The baseline's test addresses stay on the hosts' interfaces, on the same fabric the VMs
    use: the same addresses again would be duplicates (both ends answering one address)."""
    if not cidr or baseline is None or not baseline.test_network:
        return
    ours, theirs = (_parsed(network) for network in (cidr, baseline.test_network))
    if ours is not None and theirs is not None and ours.overlaps(theirs):
        raise ValueError(f"--test-network {cidr} overlaps {baseline.test_network}, which the "
                         "baseline gave the hosts' interfaces (its addresses are still there): "
                         "give the VM run a network of its own")


def _parsed(cidr: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(cidr, strict=False)
    except ValueError:
        return None  # the plan names what is wrong with it


def _chosen(machines: list[Machine], only: str | None, interface: str | None) -> list[Machine]:
    """The machines `--only` names (all without it), with `--interface` as their benchmark
    interface when given."""
    if only:
        names = [name for name in only.split(",") if name]
        unknown = sorted(set(names) - {m.name for m in machines})
        if unknown:
            raise ValueError(f"--only names {', '.join(unknown)}, which this run does not have; "
                             f"it has {', '.join(m.name for m in machines)}")
        machines = [m for m in machines if m.name in names]
    if interface:
        machines = [dataclasses.replace(m, interface=interface) for m in machines]
    return machines


def _verdict(options: argparse.Namespace, result: RunResult, baseline: RunResult) -> int:
    if baseline.plan != result.plan:
        print(f"acceptance: the baseline ran the {baseline.plan} plan and this run the "
              f"{result.plan} plan: record the baseline with the same --plan", file=sys.stderr)
        return 2
    verdict = compare(result, baseline, threshold=options.threshold, min_size=options.min_size)
    text = table(verdict)
    write_json(options.out / "verdict.json", verdict)
    (options.out / "table.txt").write_text(text)
    from .chart import write_chart

    write_chart(verdict, options.out)
    print(text, end="")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
