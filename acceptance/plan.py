"""What runs where: the benchmark commands of a plan, and running them through a `Runner`.

The GPU plan: nccl-tests (all_reduce, all_gather, reduce_scatter) across every machine through
mpirun from the first one, with the stack's hostfile and each machine's own NCCL environment
(NIC names differ from VM to VM, so each machine is an MPMD app context of its own, started
through `env`); then CUDA samples' bandwidthTest and p2pBandwidthLatencyTest on each machine.
The network plan (the lab, where there are no GPUs): iperf3 from each machine to the next one,
over each machine's benchmark interface (a VM's NCCL_SOCKET_IFNAME, a host's first NIC port),
to the address the server has there; with a test network (`--test-network CIDR`, for a fabric
without addressing, as the lab's) each machine's interface is first brought up and given the
next address of it, and for VMs the PFs of their hosts are brought up (a VF has no link while
its PF is down). The same plan runs on the VMs and, for the baseline, on the hosts as bare
metal; only the machines differ. Commands are argv lists: the `Runner` quotes every word
(`SshRunner` through `Host.run`, hence providers/common/shell.quote).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Union

from . import parsers
from .compare import Point, RunResult, Series

COLLECTIVES = ["all_reduce_perf", "all_gather_perf", "reduce_scatter_perf"]
HOSTFILE_PATH = "/tmp/vela-acceptance.hostfile"


@dataclass(frozen=True)
class Machine:
    """A VM (name "<node>-vmN", as the stack's outputs name it) or a bare-metal host."""

    name: str
    address: str
    user: str
    port: int = 22
    slots: int = 1  # ranks: one per GPU
    environment: dict[str, str] = field(default_factory=dict)  # its NCCL environment
    host_keys: tuple[str, ...] = ()  # pinned SSH host keys (a host's `host_key` in config)
    interface: str = ""  # the benchmark interface: a netdev name, or a PF's PCI address
    ports: tuple[str, ...] = ()  # a host's NIC ports (the PFs its VMs' VFs come from)
    hypervisor: Machine | None = None  # a VM's host, whose console log holds its host keys
    console_log: str = ""  # that log's path on the hypervisor
    jump: bool = False  # reached through its hypervisor (a guest on the host's own network)


@dataclass(frozen=True)
class Options:
    nccl_tests: str = "/opt/nccl-tests/build"
    cuda_samples: str = "/opt/cuda-samples/bin"
    min_bytes: str = "8"
    max_bytes: str = "8G"
    iperf_seconds: int = 10
    timeout: float = 1800.0
    test_network: str | None = None  # CIDR to address the benchmark interfaces from


Context = dict[str, str]  # what earlier steps found out (a server's address), by name


@dataclass(frozen=True)
class Step:
    title: str
    machine: Machine
    # argv, or a function of what earlier steps found (an address known only at run time)
    argv: Union[list[str], Callable[[Context], list[str]]]  # noqa: UP007 - a dataclass field
    parse: Callable[[str], list[Series]] | None = None  # None: a set-up step
    stdin: bytes | None = None
    remember: Callable[[str], tuple[str, str]] | None = None  # output -> (name, value)


class Runner(Protocol):
    def run(self, machine: Machine, argv: Sequence[str], *, timeout: float,
            stdin: bytes | None = None) -> str:
        """Run argv on the machine and return what it printed; raise when it fails."""


def gpu_plan(machines: list[Machine], hostfile: str, options: Options = Options()) -> list[Step]:
    if not machines:
        raise ValueError("the stack has no machine to benchmark (vmAddresses is empty): deploy "
                         "it with `scripts/up` first")
    launcher = machines[0]
    steps = [Step("hostfile", launcher, ["sh", "-c", 'cat > "$1"', "sh", HOSTFILE_PATH],
                  stdin=hostfile.encode())]
    for collective in COLLECTIVES:
        steps.append(Step(collective, launcher, mpirun(machines, collective, options),
                          parse=_nccl_series(collective)))
    for machine in machines:
        steps.append(Step(f"bandwidthTest {machine.name}", machine,
                          [f"{options.cuda_samples}/bandwidthTest"],
                          parse=_bandwidth_series(machine.name)))
        steps.append(Step(f"p2pBandwidthLatencyTest {machine.name}", machine,
                          [f"{options.cuda_samples}/p2pBandwidthLatencyTest"],
                          parse=_p2p_series(machine.name)))
    return steps


def mpirun(machines: list[Machine], collective: str, options: Options) -> list[str]:
    """One app context per machine, so that each gets its own NCCL environment; -g 1: one GPU
    per rank, as many ranks as the hostfile gives the machine slots."""
    argv = ["mpirun", "--hostfile", HOSTFILE_PATH, "--bind-to", "none", "--tag-output"]
    for index, machine in enumerate(machines):
        if index:
            argv.append(":")
        env = [f"{name}={value}" for name, value in sorted(machine.environment.items())]
        argv += ["-np", str(machine.slots), "-host", f"{machine.address}:{machine.slots}",
                 "env", *env, f"{options.nccl_tests}/{collective}",
                 "-b", options.min_bytes, "-e", options.max_bytes, "-f", "2", "-g", "1"]
    return argv


# The interface of a machine: a netdev name as it is, a PCI address as that function's netdev.
_INTERFACE = """iface() { case $1 in
  *:*:*.*) for n in /sys/bus/pci/devices/"$1"/net/*; do
      [ -e "$n" ] && echo "${n##*/}" && return; done
    echo "no network interface on $1" >&2; return 1 ;;
  *) echo "$1" ;; esac; }
"""
_UP = _INTERFACE + 'dev=$(iface "$1") && ip link set dev "$dev" up'
_ADDRESS = _UP + ' && ip -4 addr replace "$2" dev "$dev"'
_ALL_UP = _INTERFACE + 'for port in "$@"; do dev=$(iface "$port") && ip link set dev "$dev" up \
  || exit 1; done'
_SHOW = _INTERFACE + 'dev=$(iface "$1") && ip -4 -o addr show dev "$dev"'


def network_plan(machines: list[Machine], options: Options = Options()) -> list[Step]:
    """iperf3 from each machine to the next (a ring when there are more than two): on the lab,
    guest to guest over the VFs, or host to host over the PFs for the baseline."""
    if len(machines) < 2:
        raise ValueError("the network plan needs two machines at least (iperf3 runs between "
                         f"them); the stack has {len(machines)}")
    missing = [m.name for m in machines if not m.interface]
    if missing:
        raise ValueError(f"no benchmark interface for {', '.join(missing)}: a VM needs "
                         "NCCL_SOCKET_IFNAME in its NCCL environment, a host a NIC port")
    steps = _test_network(machines, options.test_network) if options.test_network else []
    addresses = _addresses(machines, options.test_network)
    pairs = list(zip(machines, machines[1:], strict=False))
    if len(machines) > 2:
        pairs.append((machines[-1], machines[0]))
    for client, server in pairs:
        if server.name not in addresses:
            steps.append(Step(f"address of {server.name}", server,
                              ["sh", "-c", _SHOW, "sh", server.interface],
                              remember=_remember_address(server)))
        steps.append(Step(f"iperf3 server {server.name}", server,
                          ["iperf3", "--server", "--one-off", "--daemon"]))
        steps.append(Step(f"iperf3 {client.name}->{server.name}", client,
                          _iperf_client(server, addresses.get(server.name), options),
                          parse=_iperf_series(f"{client.name}->{server.name}")))
    return steps


def _test_network(machines: list[Machine], cidr: str) -> list[Step]:
    """Bring each benchmark interface up with an address of `cidr`, in machine order; a VM's
    host gets every NIC port up too (a VF has no link while its PF is down)."""
    steps, seen = [], set()
    for machine in machines:
        host = machine.hypervisor
        if host is None or host.name in seen:
            continue
        seen.add(host.name)
        ports = [port for port in host.ports or (host.interface,) if port]
        if ports:
            steps.append(Step(f"link up {host.name}", host,
                              _root(["sh", "-c", _ALL_UP, "sh", *ports])))
    network = _network(cidr, len(machines))
    for machine, address in zip(machines, network.hosts(), strict=False):
        steps.append(Step(f"test address {machine.name}", machine, _root([
            "sh", "-c", _ADDRESS, "sh", machine.interface, f"{address}/{network.prefixlen}"])))
    return steps


def _network(cidr: str, count: int) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise ValueError(f"--test-network {cidr}: {exc}; give an IPv4 network such as "
                         "10.77.0.0/24") from None
    if network.num_addresses - 2 < count:
        raise ValueError(f"--test-network {cidr} has room for {max(network.num_addresses - 2, 0)} "
                         f"machines, not {count}: give a larger network")
    return network


def _addresses(machines: list[Machine], cidr: str | None) -> dict[str, str]:
    if not cidr:
        return {}
    return {m.name: str(a) for m, a in zip(machines, _network(cidr, len(machines)).hosts(),
                                           strict=False)}


_AS_ROOT = 'if [ "$(id -u)" = 0 ]; then exec "$@"; else exec sudo -n "$@"; fi'


def _root(argv: list[str]) -> list[str]:
    """argv as root: as it is for root (whatever the account's name), else through sudo."""
    return ["sh", "-c", _AS_ROOT, "sh", *argv]


def _remember_address(server: Machine) -> Callable[[str], tuple[str, str]]:
    def remember(text: str) -> tuple[str, str]:
        found = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", text)
        if not found:
            raise parsers.ParseError(
                f"{server.name} has no IPv4 address on {server.interface}: configure the "
                "fabric's addresses, or pass --test-network CIDR to give it one for the run")
        return f"address:{server.name}", found.group(1)
    return remember


def _iperf_client(server: Machine, address: str | None,
                  options: Options) -> Callable[[Context], list[str]]:
    def argv(found: Context) -> list[str]:
        return ["iperf3", "--client", address or found[f"address:{server.name}"], "--json",
                "--time", str(options.iperf_seconds)]
    return argv


def execute(steps: list[Step], runner: Runner, *, stack: str, environment: str, plan: str,
            timeout: float = Options.timeout, progress: Callable[[str], None] = print,
            ) -> RunResult:
    series, raw, found = [], {}, {}  # found: what remember steps learned, for later argv
    for step in steps:
        progress(f"acceptance: {step.title} on {step.machine.name}")
        argv = step.argv(found) if callable(step.argv) else step.argv
        text = runner.run(step.machine, argv, timeout=timeout, stdin=step.stdin)
        if step.remember is not None:
            name, value = step.remember(text)
            found[name] = value
        if step.parse is None:
            continue
        try:
            parsed = step.parse(text)
        except parsers.ParseError as exc:
            raise parsers.ParseError(f"{step.title} on {step.machine.name}: {exc}") from None
        for one in parsed:
            raw[one.name] = text
        series += parsed
    return RunResult(stack=stack, environment=environment, plan=plan, series=series, raw=raw)


def _nccl_series(collective: str) -> Callable[[str], list[Series]]:
    def parse(text: str) -> list[Series]:
        run = parsers.parse_nccl(text)
        # out-of-place busbw, the column nccl-tests' doc and the paper's Figure 2 read
        points = [Point(key=str(row.size), size=row.size, value=row.busbw)
                  for row in run.rows if row.size > 0]
        return [Series(benchmark=collective, machine="all", metric="busbw", unit="GB/s",
                       points=points, average=run.avg_busbw, wrong=run.wrong)]
    return parse


def _bandwidth_series(machine: str) -> Callable[[str], list[Series]]:
    def parse(text: str) -> list[Series]:
        test = parsers.parse_bandwidth_test(text)
        if not test.passed:
            raise parsers.ParseError("bandwidthTest reported Result = FAIL")
        points = [Point(key=direction, value=test.best(direction))
                  for direction in ("H2D", "D2H", "D2D")
                  if any(t.direction == direction for t in test.transfers)]
        return [Series(benchmark="bandwidthTest", machine=machine, metric="bandwidth",
                       unit="GB/s", points=points)]
    return parse


def _p2p_series(machine: str) -> Callable[[str], list[Series]]:
    def parse(text: str) -> list[Series]:
        matrix = parsers.parse_p2p_test(text).matrix("Bidirectional", "Enabled")
        points = [Point(key=f"gpu{i}-gpu{j}", value=matrix[i][j])
                  for i in range(len(matrix)) for j in range(len(matrix)) if i != j]
        return [Series(benchmark="p2pBandwidthLatencyTest", machine=machine,
                       metric="bidirectional bandwidth", unit="GB/s", points=points)]
    return parse


def _iperf_series(pair: str) -> Callable[[str], list[Series]]:
    def parse(text: str) -> list[Series]:
        report = parsers.parse_iperf3(text)
        return [Series(benchmark="iperf3", machine=pair, metric="throughput", unit="Gbit/s",
                       points=[Point(key="received", value=report.received_bps / 1e9)])]
    return parse
