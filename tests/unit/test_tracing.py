"""The tracer under the fake kernel: every write a traced command makes reaches the handler,
including a call strace logs in two halves (unfinished, then resumed)."""

from __future__ import annotations

from tests.support.tracing import Write, _LogReader, run_traced

ROUNDS = 300


def test_every_write_of_overlapping_processes_reaches_the_kernel(tmp_path):
    """`printf | dd` is how vela writes a config register. The pipe write and dd's write often
    overlap, and strace then logs one of them as unfinished and resumed (seen here: 4 in 300);
    each of dd's writes must still reach the fake kernel, or it keeps no rule for it."""
    target = tmp_path / "config"
    target.write_bytes(b"\0\0")
    seen: list[Write] = []
    command = (f"for i in $(seq {ROUNDS}); do printf ab | dd of={target} bs=2 count=1 "
               "conv=notrunc status=none; done")
    code, _, stderr = run_traced(command, None, lambda write: seen.append(write), timeout=120)
    assert code == 0, stderr
    to_target = [write for write in seen if write.path == str(target.resolve())]
    assert len(to_target) == ROUNDS
    assert {write.data for write in to_target} == {b"ab"}


def test_a_split_call_counts_where_it_completed(tmp_path):
    """The format strace(1) describes, as strace 6.1 printed it here: the first half of a call
    ends in `<unfinished ...>`; the same pid's `<... write resumed>` line completes it."""
    log = tmp_path / "log"
    log.write_text(
        '3733  write(1<\\x70\\x69\\x70\\x65>, "\\x61\\x62", 2 <unfinished ...>\n'
        '3734  write(1<\\x2f\\x63>, "\\x61\\x62", 2 <unfinished ...>\n'
        '3733  <... write resumed>)              = 2\n'
        '3734  <... write resumed>)              = -1 EBADF (Bad file descriptor)\n'
        '3735  <... write resumed>)              = 2\n')
    writes = _LogReader(log).new_writes()
    assert writes == [Write("pipe", b"ab")]  # the refused one and the orphan half are no writes
