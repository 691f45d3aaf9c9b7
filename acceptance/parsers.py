"""Parsers of what the benchmarks print: nccl-tests, CUDA samples, iperf3 --json.

Pure functions from text to typed results; nothing here runs a command. Each parser reads the
layouts seen in real outputs (tests/data/recorded/benchmarks): nccl-tests before and after its
version line (2.18), with and without the `root` column, mpirun's `--tag-output` prefixes;
bandwidthTest with tabs or spaces. A text the parser cannot read raises `ParseError`, saying
what is missing and what usually causes it.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict


class ParseError(ValueError):
    """A benchmark's output is not what its parser reads; the message says what and why."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _start(text: str, limit: int = 300) -> str:
    head = text.strip()[:limit]
    return repr(head) if head else "nothing"


# -- nccl-tests ----------------------------------------------------------------------------------

class NcclRow(_Frozen):
    """One message size: out-of-place and in-place time (us), algbw and busbw (GB/s)."""

    size: int
    count: int
    type: str
    redop: str
    time_us: float
    algbw: float
    busbw: float
    wrong: int | None  # None: "N/A" (the test did not check)
    in_place_time_us: float
    in_place_algbw: float
    in_place_busbw: float
    in_place_wrong: int | None


class NcclRun(_Frozen):
    collective: str | None  # "all_reduce_perf", from the 2.18+ header line; None before it
    version: str | None
    ranks: int
    rows: list[NcclRow]
    avg_busbw: float | None  # the "# Avg bus bandwidth" line: the mean over every size

    @property
    def wrong(self) -> int:
        return sum((row.wrong or 0) + (row.in_place_wrong or 0) for row in self.rows)


# mpirun --tag-output puts "[1,0]<stdout>:" before every line of rank 0.
_TAG = re.compile(r"^\[\d+,\d+\]<std(?:out|err)>:")
_NCCL_NUMBER = re.compile(r"^-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")
# Column names of the table header, in the two layouts nccl-tests has printed: with `root`
# (since 2.0 for every collective) and without it (1.x, and some forks).
_WITH_ROOT = ["size", "count", "type", "redop", "root"]
_WITHOUT_ROOT = ["size", "count", "type", "redop"]


def _untagged(text: str) -> list[str]:
    return [_TAG.sub("", line.rstrip("\r")) for line in text.splitlines()]


def parse_nccl(text: str) -> NcclRun:
    """The result table of one nccl-tests run (all_reduce_perf, all_gather_perf, ...)."""
    lines = _untagged(text)
    header = next((i for i, line in enumerate(lines)
                   if line.startswith("#") and line[1:].split()[:4] == _WITHOUT_ROOT), None)
    if header is None:
        raise ParseError(
            "no nccl-tests result table (no '#  size  count  type  redop ...' header line) in "
            f"the output, which began with {_start(text)}: the test did not start (a missing "
            "binary, an MPI or NCCL error above), or this is not nccl-tests output")
    lead = _WITH_ROOT if lines[header][1:].split()[4:5] == ["root"] else _WITHOUT_ROOT
    rows = []
    for line in lines[header + 1:]:
        fields = line.split()
        if not fields or line.startswith("#"):
            continue
        if not fields[0].isdigit():
            continue  # NCCL INFO/WARN lines interleaved by other ranks
        rows.append(_nccl_row(fields, len(lead), line))
    if not rows:
        raise ParseError("the nccl-tests table has a header but no result line: the run "
                         "stopped before its first size (see the errors printed after the "
                         "header)")
    return NcclRun(collective=_match(r"^# Collective test starting: (\S+)", lines),
                   version=_match(r"^# nccl-tests version (\S+)", lines),
                   ranks=sum(1 for line in lines if re.match(r"^#\s+Rank\s+\d+", line)),
                   rows=rows, avg_busbw=_float_or_none(
                       _match(r"^# Avg bus bandwidth\s*:\s*(\S+)", lines)))


def _nccl_row(fields: list[str], lead: int, line: str) -> NcclRow:
    # lead columns, then time algbw busbw wrong, twice (out-of-place, in-place)
    if len(fields) != lead + 8:
        raise ParseError(f"nccl-tests result line {line.strip()!r} has {len(fields)} fields, "
                         f"not the {lead + 8} its header names: the output is cut or mixed "
                         "with another process's lines (run mpirun with --tag-output)")
    numbers = fields[lead:]
    for value in numbers[:3] + numbers[4:7]:
        if not _NCCL_NUMBER.match(value):
            raise ParseError(f"nccl-tests result line {line.strip()!r}: {value!r} is not a "
                             "number")
    return NcclRow(size=int(fields[0]), count=int(fields[1]), type=fields[2], redop=fields[3],
                   time_us=float(numbers[0]), algbw=float(numbers[1]),
                   busbw=float(numbers[2]), wrong=_wrong(numbers[3]),
                   in_place_time_us=float(numbers[4]), in_place_algbw=float(numbers[5]),
                   in_place_busbw=float(numbers[6]), in_place_wrong=_wrong(numbers[7]))


def _wrong(value: str) -> int | None:
    if value == "N/A":
        return None
    try:
        return int(float(value))  # older nccl-tests print the max error as a float ("5e-07")
    except ValueError:
        raise ParseError(f"nccl-tests error column holds {value!r}, not a count") from None


def _match(pattern: str, lines: list[str]) -> str | None:
    for line in lines:
        found = re.match(pattern, line)
        if found:
            return found.group(1)
    return None


def _float_or_none(value: str | None) -> float | None:
    return None if value is None else float(value)


# -- CUDA samples: bandwidthTest -------------------------------------------------------------------

class Transfer(_Frozen):
    direction: str  # "H2D", "D2H", "D2D"
    memory: str  # "PINNED", "PAGEABLE"
    size: int
    gbps: float  # GB/s


class BandwidthTest(_Frozen):
    devices: list[str]
    transfers: list[Transfer]
    passed: bool

    def best(self, direction: str) -> float:
        found = [t.gbps for t in self.transfers if t.direction == direction]
        if not found:
            raise KeyError(direction)
        return max(found)


_DIRECTIONS = {"Host to Device": "H2D", "Device to Host": "D2H", "Device to Device": "D2D"}


def parse_bandwidth_test(text: str) -> BandwidthTest:
    """CUDA samples' bandwidthTest in its readable mode (quick, range or shmoo)."""
    lines = _untagged(text)
    transfers: list[Transfer] = []
    direction = memory = None
    for line in lines:
        stripped = line.strip()
        section = re.match(r"^(Host to Device|Device to Host|Device to Device) Bandwidth",
                           stripped)
        if section:
            direction, memory = _DIRECTIONS[section.group(1)], None
            continue
        kind = re.match(r"^(PINNED|PAGEABLE) Memory Transfers", stripped)
        if kind:
            memory = kind.group(1)
            continue
        if stripped.startswith("Transfer Size"):
            if "GB/s" not in stripped:
                raise ParseError(f"bandwidthTest prints its bandwidth as {stripped!r}; this "
                                 "parser reads GB/s (cuda-samples 11.0 and later): update the "
                                 "samples")
            continue
        values = stripped.split()
        if direction and len(values) == 2 and values[0].isdigit():
            transfers.append(Transfer(direction=direction, memory=memory or "PINNED",
                                      size=int(values[0]), gbps=float(values[1])))
    result = _match(r"^Result = (\S+)", [line.strip() for line in lines])
    if not transfers or result is None:
        raise ParseError("no bandwidthTest result (no 'Transfer Size' rows and no 'Result = "
                         f"PASS|FAIL' line) in the output, which began with {_start(text)}: "
                         "is the GPU visible in this machine (nvidia-smi)?")
    devices = [m.group(1) for m in (re.match(r"^\s*Device \d+: (.+?)\s*$", line)
                                    for line in lines) if m]
    return BandwidthTest(devices=devices, transfers=transfers, passed=result == "PASS")


# -- CUDA samples: p2pBandwidthLatencyTest -----------------------------------------------------

class P2pTest(_Frozen):
    devices: list[str]
    # Title as printed ("Bidirectional P2P=Enabled Bandwidth Matrix (GB/s)"); a latency matrix
    # prints a GPU and a CPU table, kept as "<title> GPU" and "<title> CPU".
    matrices: dict[str, list[list[float]]]

    def matrix(self, direction: str = "Bidirectional", p2p: str = "Enabled") -> list[list[float]]:
        for title, values in self.matrices.items():
            if title.startswith(f"{direction} P2P={p2p} Bandwidth"):
                return values
        raise KeyError(f"{direction} P2P={p2p} Bandwidth")


def parse_p2p_test(text: str) -> P2pTest:
    """CUDA samples' p2pBandwidthLatencyTest: every matrix it prints, by title."""
    lines = _untagged(text)
    matrices: dict[str, list[list[float]]] = {}
    title = current = None
    for line in lines:
        stripped = line.strip()
        if stripped.endswith(("Matrix (GB/s)", "Matrix (us)", "Connectivity Matrix")):
            title, current = stripped, None
            continue
        fields = stripped.split()
        if title and fields and fields[0] in {"D\\D", "GPU", "CPU"}:
            current = title if fields[0] == "D\\D" else f"{title} {fields[0]}"
            matrices[current] = []
            continue
        if current and len(fields) > 1 and fields[0].isdigit():
            try:
                matrices[current].append([float(value) for value in fields[1:]])
            except ValueError:
                raise ParseError(f"p2pBandwidthLatencyTest row {stripped!r} under "
                                 f"{current!r} is not all numbers") from None
        elif current and stripped:
            current = None
    if not any("Bandwidth" in name for name in matrices):
        raise ParseError("no p2pBandwidthLatencyTest bandwidth matrix in the output, which "
                         f"began with {_start(text)}: does this machine have at least one GPU?")
    devices = [m.group(1) for m in (re.match(r"^Device: \d+, ([^,]+),", line) for line in lines)
               if m]
    for name, rows in matrices.items():
        if any(len(row) != len(rows) for row in rows):
            raise ParseError(f"p2pBandwidthLatencyTest matrix {name!r} is not square: the "
                             "output is cut")
    return P2pTest(devices=devices, matrices=matrices)


# -- iperf3 --json -----------------------------------------------------------------------------

class Iperf(_Frozen):
    protocol: str
    streams: int
    seconds: float
    received_bps: float  # end.sum_received.bits_per_second: what reached the server
    sent_bps: float
    retransmits: int | None


def parse_iperf3(text: str) -> Iperf:
    """iperf3's --json report (the client's; it holds both ends' sums)."""
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"iperf3 output is not JSON ({exc}); it began with {_start(text)}: "
                         "run the client with --json") from None
    if not isinstance(report, dict):
        raise ParseError("iperf3 --json output is not an object")
    if report.get("error"):
        raise ParseError(f"iperf3 failed: {report['error']} (is the server started on the "
                         "other end, and the port open?)")
    try:
        end, start = report["end"], report["start"]["test_start"]
        received, sent = end["sum_received"], end["sum_sent"]
        return Iperf(protocol=start["protocol"], streams=start["num_streams"],
                     seconds=received["seconds"],
                     received_bps=received["bits_per_second"], sent_bps=sent["bits_per_second"],
                     retransmits=sent.get("retransmits"))
    except (KeyError, TypeError) as exc:
        raise ParseError(f"iperf3 --json output has no {exc}: a UDP test (this reads TCP's "
                         "end.sum_received) or an interrupted run") from None
