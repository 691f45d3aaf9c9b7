"""Results, the comparison of VMs with a baseline, the verdict, and the files they go to.

A run is a list of `Series`: one benchmark's values by key (a message size for nccl-tests, a
direction for bandwidthTest, a GPU pair for p2pBandwidthLatencyTest, a pair of machines for
iperf3). `compare` puts each VM value beside the baseline's at the same key.

The verdict (`Verdict`): the run fails when, at any gated point, the VM reaches less than
(1 - threshold) of the baseline (threshold 5% by default), when a gated point has no baseline
value, or when nccl-tests counted wrong results. Gated are nccl-tests sizes of at least
`min_size` (1 MiB by default) and every point of the other benchmarks. Why not smaller sizes:
there an operation takes a few microseconds, its busbw measures launch and network latency,
not bandwidth (nccl-tests doc/PERFORMANCE.md: on large sizes "it makes more sense to look at
the bandwidth"), and a few microseconds of jitter move it by more than 5%; the traffic of
training is MiB-sized and up (PyTorch DDP's gradient buckets are 25 MiB, FSDP's shards
larger). Why not the "# Avg bus bandwidth" line: it is the mean over every size the run was
given, so it depends on -b/-e, and a drop at the sizes that matter can hide behind the ones
that do not; it is kept in the result for reference.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_THRESHOLD = 0.05
DEFAULT_MIN_SIZE = 1 << 20


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Point(_Model):
    key: str  # "1048576" (bytes), "H2D", "gpu0-gpu1", "vm0->vm1"
    size: int | None = None  # bytes, for nccl-tests: the chart's x axis and the gate
    value: float


class Series(_Model):
    benchmark: str  # "all_reduce_perf", "bandwidthTest", "p2pBandwidthLatencyTest", "iperf3"
    machine: str  # where it ran: "all" for a run across machines, else a VM or host name
    metric: str  # "busbw", "bandwidth", "throughput"
    unit: str  # "GB/s", "Gbit/s"
    points: list[Point]
    average: float | None = None  # nccl-tests' own "# Avg bus bandwidth"
    wrong: int = 0  # nccl-tests' count of wrong results

    @property
    def name(self) -> str:
        return f"{self.benchmark}@{self.machine}"


class RunResult(_Model):
    """What one run measured: the VMs', or the baseline's on the same nodes as bare metal."""

    stack: str
    environment: str  # "vm" or "baremetal"
    plan: str  # "gpu" or "network"
    series: list[Series]
    raw: dict[str, str] = Field(default_factory=dict)  # benchmark output by series name
    # --test-network of the run: its addresses stay on the interfaces after it
    test_network: str | None = None

    def find(self, name: str) -> Series | None:
        return next((s for s in self.series if s.name == name), None)


class Row(_Model):
    benchmark: str
    machine: str
    key: str
    size: int | None
    unit: str
    vm: float
    baseline: float | None
    ratio: float | None
    gated: bool
    passed: bool | None  # None: not gated
    # The baseline machine(s) compared with, when not the VM's own node(s): the fabric's
    # median host pair for VMs whose nodes have no pair of their own
    reference: str | None = None


class Verdict(_Model):
    threshold: float
    min_size: int
    passed: bool
    rows: list[Row]
    problems: list[str]


def compare(vm: RunResult, baseline: RunResult, *, threshold: float = DEFAULT_THRESHOLD,
            min_size: int = DEFAULT_MIN_SIZE) -> Verdict:
    if not 0 <= threshold < 1:
        raise ValueError(f"the threshold is a fraction between 0 and 1 (0.05 is 5%), not "
                         f"{threshold}")
    rows, problems = [], []
    for series in vm.series:
        base = baseline.find(_baseline_name(series, baseline))
        reference = None
        if base is None:
            base = _pair_reference(series, baseline)
            reference = base.machine if base else None
        if series.wrong:
            problems.append(f"{series.name}: nccl-tests counted {series.wrong} wrong results: "
                            "the VMs corrupt data; no bandwidth makes up for that")
        by_key = {p.key: p for p in base.points} if base else {}
        for point in series.points:
            gated = point.size is None or point.size >= min_size
            found = by_key.get(point.key)
            ratio = (point.value / found.value) if found and found.value > 0 else None
            passed = None
            if gated:
                passed = ratio is not None and ratio >= 1 - threshold
                if found is None:
                    problems.append(f"{series.name} {_label(point)}: the baseline has no value "
                                    f"here; record it with the same benchmark and sizes "
                                    f"(--record-baseline)")
                elif not passed:
                    problems.append(
                        f"{series.name} {_label(point)}: {point.value:g} {series.unit} on the "
                        f"VMs, {found.value:g} on bare metal{_between(reference)} "
                        f"({_percent(ratio)}), below the {_percent(1 - threshold)} required")
            rows.append(Row(benchmark=series.benchmark, machine=series.machine, key=point.key,
                            size=point.size, unit=series.unit, vm=point.value,
                            baseline=found.value if found else None, ratio=ratio,
                            gated=gated, passed=passed, reference=reference))
    if not any(row.gated for row in rows):
        problems.append(f"no measured point is gated (nccl-tests sizes of {min_size} B and "
                        "up): run the benchmarks up to larger sizes")
    return Verdict(threshold=threshold, min_size=min_size, passed=not problems, rows=rows,
                   problems=problems)


def _pair_reference(series: Series, baseline: RunResult) -> Series | None:
    """For a benchmark between two machines (iperf3) whose nodes have no bare-metal pair of
    their own (two VMs of one node; a ring over other nodes), the fabric's host-to-host
    figure: the baseline pair of the median first value of that benchmark."""
    if "->" not in series.machine:
        return None
    pairs = sorted((s for s in baseline.series
                    if s.benchmark == series.benchmark and "->" in s.machine and s.points),
                   key=lambda s: s.points[0].value)
    return pairs[len(pairs) // 2] if pairs else None


def _baseline_name(series: Series, baseline: RunResult) -> str:
    """The baseline series of the same benchmark on the same node. VM names are the node's
    name and "-vmN" (components/program.py); a bare-metal host is the node itself."""
    if baseline.find(series.name) is not None or series.machine == "all":
        return series.name
    nodes = "->".join(part.rsplit("-vm", 1)[0] for part in series.machine.split("->"))
    return f"{series.benchmark}@{nodes}"


def _between(reference: str | None) -> str:
    return f" between {reference.replace('->', ' and ')}" if reference else ""


def _label(point: Point) -> str:
    return f"at {_size(point.size)}" if point.size is not None else point.key


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def table(verdict: Verdict) -> str:
    """The plain-text table: every point, VM against baseline, and the verdict."""
    head = ["benchmark", "machine", "point", "unit", "vm", "baseline", "ratio", "gate"]
    lines = [head]
    references = sorted({row.reference for row in verdict.rows if row.reference})
    for row in verdict.rows:
        gate = "-" if row.passed is None else ("ok" if row.passed else "FAIL")
        machine = f"{row.machine} *" if row.reference else row.machine
        lines.append([row.benchmark, machine, _size(row.size) if row.size is not None
                      else row.key, row.unit, f"{row.vm:.2f}",
                      "-" if row.baseline is None else f"{row.baseline:.2f}",
                      _percent(row.ratio), gate])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(cell.rjust(width) if i >= 4 else cell.ljust(width)
                      for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in lines]
    required = _percent(1 - verdict.threshold)
    if references:
        text.append(f"* against the fabric's median host pair ({', '.join(references)}): "
                    "these nodes have no pair of their own in the baseline")
    text.append("")
    if verdict.passed:
        text.append(f"PASS: every gated point reaches at least {required} of the baseline")
    else:
        text.append(f"FAIL ({len(verdict.problems)}): the VMs must reach {required} of the "
                    "baseline at every gated point")
        text.extend(f"  - {problem}" for problem in verdict.problems)
    return "\n".join(text) + "\n"


def write_json(path: Path, model: BaseModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n")


def read_result(path: Path) -> RunResult:
    """A result file written earlier (a baseline), checked against the model."""
    try:
        return RunResult.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"baseline file {path} does not exist: record one with "
                         f"--record-baseline {path} on the same nodes as bare metal") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not a result file of `python -m acceptance` ({exc}); "
                         "record it again with --record-baseline") from None
