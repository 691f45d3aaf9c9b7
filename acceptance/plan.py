"""What runs where: the benchmark commands of a plan, and running them through a `Runner`.

The GPU plan: nccl-tests (all_reduce, all_gather, reduce_scatter) across every machine through
mpirun from the first one, with the stack's hostfile and each machine's own NCCL environment
(NIC names differ from VM to VM, so each machine is an MPMD app context of its own, started
through `env`); then CUDA samples' bandwidthTest and p2pBandwidthLatencyTest on each machine.
The network plan (the lab, where there are no GPUs): iperf3 from each machine to the next one.
The same plan runs on the VMs and, for the baseline, on the hosts as bare metal; only the
machines differ. Commands are argv lists: the `Runner` quotes every word (`SshRunner` through
`Host.run`, hence providers/common/shell.quote).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

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


@dataclass(frozen=True)
class Options:
    nccl_tests: str = "/opt/nccl-tests/build"
    cuda_samples: str = "/opt/cuda-samples/bin"
    min_bytes: str = "8"
    max_bytes: str = "8G"
    iperf_seconds: int = 10
    timeout: float = 1800.0


@dataclass(frozen=True)
class Step:
    title: str
    machine: Machine
    argv: list[str]
    parse: Callable[[str], list[Series]] | None = None  # None: a set-up step
    stdin: bytes | None = None


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


def network_plan(machines: list[Machine], options: Options = Options()) -> list[Step]:
    """iperf3 from each machine to the next (a ring when there are more than two): on the lab,
    guest to guest over the VFs, or host to host over the PFs for the baseline."""
    if len(machines) < 2:
        raise ValueError("the network plan needs two machines at least (iperf3 runs between "
                         f"them); the stack has {len(machines)}")
    pairs = list(zip(machines, machines[1:], strict=False))
    if len(machines) > 2:
        pairs.append((machines[-1], machines[0]))
    steps = []
    for client, server in pairs:
        steps.append(Step(f"iperf3 server {server.name}", server,
                          ["iperf3", "--server", "--one-off", "--daemon"]))
        steps.append(Step(f"iperf3 {client.name}->{server.name}", client,
                          ["iperf3", "--client", server.address, "--json",
                           "--time", str(options.iperf_seconds)],
                          parse=_iperf_series(f"{client.name}->{server.name}")))
    return steps


def execute(steps: list[Step], runner: Runner, *, stack: str, environment: str, plan: str,
            timeout: float = Options.timeout, progress: Callable[[str], None] = print,
            ) -> RunResult:
    series, raw = [], {}
    for step in steps:
        progress(f"acceptance: {step.title} on {step.machine.name}")
        text = runner.run(step.machine, step.argv, timeout=timeout, stdin=step.stdin)
        if step.parse is None:
            continue
        try:
            found = step.parse(text)
        except parsers.ParseError as exc:
            raise parsers.ParseError(f"{step.title} on {step.machine.name}: {exc}") from None
        for one in found:
            raw[one.name] = text
        series += found
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
