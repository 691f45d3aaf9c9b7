"""The acceptance parsers against real recorded outputs (tests/data/recorded/INDEX.md, 10)."""

from __future__ import annotations

import pytest

from acceptance import parsers
from tests.support.recorded import recorded, recorded_files


def test_all_reduce_across_two_h100_nodes():
    run = parsers.parse_nccl(recorded("benchmarks/nccl-all-reduce-2x8xh100-a3mega.txt"))
    assert run.ranks == 16 and run.collective is None and run.version is None
    assert [row.size for row in run.rows[:2]] == [8, 16] and run.rows[-1].size == 8589934592
    last = run.rows[-1]
    assert (last.time_us, last.algbw, last.busbw, last.wrong) == (47535.0, 180.71, 338.82, 0)
    assert (last.in_place_time_us, last.in_place_busbw) == (47743.0, 337.35)
    assert run.avg_busbw == 70.742 and run.wrong == 0


def test_all_gather_with_repeated_zero_sizes():
    run = parsers.parse_nccl(recorded("benchmarks/nccl-all-gather-2x2080ti-autodl.txt"))
    assert [row.size for row in run.rows[:3]] == [0, 0, 32]
    assert {row.redop for row in run.rows} == {"none"}
    assert run.rows[-1].busbw == 3.79 and run.avg_busbw == 1.6651


def test_newer_header_names_the_collective_and_version():
    run = parsers.parse_nccl(recorded("benchmarks/nccl-all-gather-2xgb10-v2.18.5.txt"))
    assert (run.collective, run.version, run.ranks) == ("all_gather_perf", "2.18.5", 2)
    assert [(row.size, row.busbw) for row in run.rows] == [(17179869184, 22.94)]


def test_mpirun_tagged_lines_read_as_the_plain_ones():
    text = recorded("benchmarks/nccl-all-reduce-2x2080ti-autodl.txt")
    tagged = "".join(f"[1,0]<stdout>:{line}\n" for line in text.splitlines())
    assert parsers.parse_nccl(tagged) == parsers.parse_nccl(text)


def test_nccl_output_without_a_table_says_why():
    with pytest.raises(parsers.ParseError, match="no nccl-tests result table"):
        parsers.parse_nccl("mpirun was unable to launch the specified application\n")
    text = recorded("benchmarks/nccl-all-reduce-2x2080ti-autodl.txt")
    header_only = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    with pytest.raises(parsers.ParseError, match="no result line"):
        parsers.parse_nccl(header_only)


def test_a_cut_result_line_is_refused():
    text = recorded("benchmarks/nccl-all-reduce-2x2080ti-autodl.txt")
    last = next(line for line in text.splitlines() if line.strip().startswith("1073741824"))
    cut = text.replace(last, " ".join(last.split()[:9]))
    with pytest.raises(parsers.ParseError, match="fields"):
        parsers.parse_nccl(cut)


@pytest.mark.parametrize("name, device, d2d", [
    ("cuda-bandwidthtest-a100-sxm4-routergao.txt", "NVIDIA A100-SXM4-40GB", 1157.5),
    ("cuda-bandwidthtest-2080ti-autodl.txt", "NVIDIA GeForce RTX 2080 Ti", 518.9)])
def test_bandwidth_test(name, device, d2d):
    test = parsers.parse_bandwidth_test(recorded(f"benchmarks/{name}"))
    assert test.devices == [device] and test.passed
    assert [(t.direction, t.memory, t.size) for t in test.transfers] == [
        ("H2D", "PINNED", 32000000), ("D2H", "PINNED", 32000000), ("D2D", "PINNED", 32000000)]
    assert test.best("D2D") == d2d


def test_bandwidth_test_without_results_says_why():
    with pytest.raises(parsers.ParseError, match="nvidia-smi"):
        parsers.parse_bandwidth_test("[CUDA Bandwidth Test] - Starting...\ncudaGetDeviceProperties"
                                     " returned 100\n-> no CUDA-capable device is detected\n")


def test_p2p_matrices():
    test = parsers.parse_p2p_test(
        recorded("benchmarks/cuda-p2pbandwidthlatencytest-2x2080ti-autodl.txt"))
    assert test.devices == ["NVIDIA GeForce RTX 2080 Ti"] * 2
    assert test.matrix("Bidirectional", "Enabled") == [[533.34, 6.10], [6.10, 534.01]]
    assert test.matrix("Unidirectional", "Disabled") == [[541.84, 5.71], [5.70, 543.05]]
    assert test.matrices["P2P Connectivity Matrix"] == [[1, 0], [0, 1]]
    assert test.matrices["P2P=Enabled Latency (P2P Writes) Matrix (us) CPU"] == [
        [3.36, 10.34], [10.47, 3.27]]
    assert len(test.matrices) == 9


def test_iperf3_json():
    report = parsers.parse_iperf3(recorded("benchmarks/iperf3-json-tcp-london-sydney.json.txt"))
    assert (report.protocol, report.streams, report.retransmits) == ("TCP", 1, 0)
    assert report.received_bps == 90340670.5721052 and report.sent_bps == 90176823.60309353


def test_iperf3_errors_say_why():
    with pytest.raises(parsers.ParseError, match="--json"):
        parsers.parse_iperf3("Connecting to host 10.0.0.2, port 5201\n")
    with pytest.raises(parsers.ParseError, match="server started"):
        parsers.parse_iperf3('{"start": {}, "intervals": [], "end": {}, '
                             '"error": "unable to connect to server: Connection refused"}')


def test_every_recorded_benchmark_output_is_read():
    readers = {"nccl-": parsers.parse_nccl, "cuda-bandwidthtest": parsers.parse_bandwidth_test,
               "cuda-p2p": parsers.parse_p2p_test, "iperf3": parsers.parse_iperf3}
    files = recorded_files("benchmarks")
    assert len(files) == 8
    for path in files:
        reader = next(r for prefix, r in readers.items() if path.name.startswith(prefix))
        reader(recorded(f"benchmarks/{path.name}"))
