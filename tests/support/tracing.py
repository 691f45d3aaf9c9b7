"""Runs a command under strace so that a fake kernel sees every write it makes, in order, and
can act on them between the script's calls, as a real kernel acts inside each write.

A fake root is plain files: a write to `unbind`, `drivers_probe` or `sriov_numvfs` only leaves
bytes behind, and a second write to the same file hides the first. `strace -f -y` logs each
write(2) with the path its file descriptor resolves to and the bytes written (strace(1): `-y`
"print paths associated with file descriptor arguments"; a line is printed when the syscall
returns, before the process is resumed, so the log is complete up to the traced process's
current point). Scripts built by `providers.common.shell.script` get a sync point after each
call: the script waits there until the fake kernel has handled what the call wrote, and stops
(like the real call's failed write) when the kernel refused one of those writes.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# --seccomp-bpf: the traced processes stop only at the traced calls (nearly native speed).
STRACE = ["strace", "-f", "--seccomp-bpf", "-qq", "-y", "-xx", "-s", "1048576",
          "-e", "trace=write,pwrite64", "-e", "signal=none"]
# pid write(fd<path>, "bytes", count) = result (pwrite64 adds an offset); with -xx the path and
# the bytes are all \xHH escapes, so nothing in them is ambiguous.
_WRITE = re.compile(r'^\d+\s+p?write(?:64)?\(\d+<(?P<path>[^>]*)>, "(?P<data>(?:[^"\\]|\\.)*)"'
                    r'(?:\.\.\.)?, \d+(?:, \d+)?\)\s+= (?P<result>-?\d+)')
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. \w+ resumed>(?P<rest>.*)$")
_SYNC_NAME = "vela_kernel_sync"


@dataclass(frozen=True)
class Write:
    """One completed write(2): the resolved path of the file and the bytes."""

    path: str
    data: bytes


# Handles one write as the kernel would, at once; returns a refusal message, or None.
Handler = Callable[[Write], "str | None"]


def run_traced(command: str, stdin: bytes | None, handle: Handler,
               timeout: float) -> tuple[int, bytes, bytes]:
    """Run `sh -c command` traced; `handle` gets each write as soon as strace logs it (a few
    milliseconds after it returned), and each sync point waits until every earlier write was
    handled. Returns (exit code, stdout, stderr)."""
    if shutil.which("strace") is None:
        raise RuntimeError("the fake kernel needs strace to see a test's writes: run scripts/setup")
    with tempfile.TemporaryDirectory(prefix="vela-trace-") as scratch:
        log, request, replies = (Path(scratch) / name for name in ("log", "sync", "reply"))
        kernel = _Kernel(_LogReader(log), handle, str(request), replies)
        kernel.start()
        script = with_sync_points(stdin, request, replies)
        process = subprocess.Popen([*STRACE, "-o", str(log), "sh", "-c", command],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = process.communicate(script or b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        kernel.finish()
        code = process.returncode
        if kernel.refusals:
            stderr += "".join(f"fake kernel: {message}\n" for message in kernel.refusals).encode()
            code = code or 1
        return code, stdout, stderr


class _Kernel(threading.Thread):
    """Follows the log: each write handled in order as it appears; a write into the sync file
    answers the waiting script (refused: a write since the last sync point was refused, and
    the rest of that call's writes were not made, as the real call stopped there)."""

    def __init__(self, reader: _LogReader, handle: Handler, request: str,
                 replies: Path) -> None:
        super().__init__(daemon=True)
        self.reader, self.handle, self.request, self.replies = reader, handle, request, replies
        # One pipe per sync point (reply.N for the Nth): an answer can never reach the read of
        # the next sync point through a pipe still open for writing. The next one exists before
        # the script can ask for it.
        self.syncs = 0
        os.mkfifo(self._reply(1))
        self.refusals: list[str] = []
        self.refused_since_sync = False
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            writes = self.reader.new_writes()
            for write in writes:
                self._one(write)
            if not writes:
                if self.stopping.is_set():
                    return
                time.sleep(0.001)

    def _one(self, write: Write) -> None:
        if write.path == self.request:
            self._answer(b"refused\n" if self.refused_since_sync else b"ok\n")
            self.refused_since_sync = False
        elif not self.refused_since_sync:
            refused = self.handle(write)
            if refused:
                self.refusals.append(refused)
                self.refused_since_sync = True

    def _answer(self, answer: bytes) -> None:
        self.syncs += 1
        os.mkfifo(self._reply(self.syncs + 1))
        # Waits for the script to open it for reading (or `finish` to stand in for a dead one).
        with contextlib.suppress(BrokenPipeError), open(self._reply(self.syncs), "wb") as pipe:
            pipe.write(answer)

    def _reply(self, number: int) -> Path:
        return Path(f"{self.replies}.{number}")

    def finish(self) -> None:
        """The command ended: handle what is left in the log, then stop."""
        self.stopping.set()
        for _ in range(600):
            self.join(timeout=0.1)
            if not self.is_alive():
                return
            # A script killed (a timeout) between its sync request and its read: be the reader
            # the answer waits for.
            with contextlib.suppress(OSError):
                os.close(os.open(self._reply(self.syncs), os.O_RDONLY | os.O_NONBLOCK))
        raise AssertionError("the fake kernel did not finish handling the command's writes")


def with_sync_points(stdin: bytes | None, request: Path, replies: Path) -> bytes | None:
    """A vela script (library, `R=...`, one call per line) with a sync point after each call;
    anything else unchanged. A refused write stops the script, as the real call's `vela_fail`
    would; in a keep-going boot script it marks the script failed and goes on."""
    if stdin is None:
        return None
    text = stdin.decode()
    match = re.search(r"^R=.*$", text, flags=re.MULTILINE)
    if match is None or "vela_fail()" not in text[:match.start()]:
        return stdin
    sync = (f"{_SYNC_NAME}() {{ printf sync > {shlex.quote(str(request))}; "
            "vela_syncs=$((vela_syncs + 1)); "
            f"read -r vela_answer < {shlex.quote(str(replies))}.\"$vela_syncs\"; "
            f'[ "$vela_answer" = ok ]; }}')
    head, rest = text[:match.end()], text[match.end():]
    lines: list[str] = [sync, "vela_syncs=0"]
    pending = ""
    for line in rest.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if not _complete(pending):
            continue  # a quoted value spans lines: sync after the whole call
        lines.append(pending)
        if pending.strip() and not pending.lstrip().startswith(("#", "exit")):
            failed = "status=1" if pending.rstrip().endswith("|| status=1") else "exit 1"
            lines.append(f"{_SYNC_NAME} || {failed}")
        pending = ""
    if pending:
        lines.append(pending)
    return (head + "\n" + "\n".join(lines) + "\n").encode()


def _complete(line: str) -> bool:
    try:
        shlex.split(line)
    except ValueError:
        return False
    return True


class _LogReader:
    """The strace log, read on: whole lines only (the traced process may be mid-line), with a
    call that strace split in two put together again. strace(1): "If a system call is being
    executed and meanwhile another one is being called from a different thread/process then
    strace will try to preserve the order of those events and mark the ongoing call as being
    unfinished. When the call returns it will be marked as resumed." In `printf | dd`, the
    writer's pipe write and dd's write to config overlap that way on a busy machine; read as
    two lines, the config write was lost to the fake kernel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.unfinished: dict[str, str] = {}  # pid -> the call's first half

    def new_writes(self) -> list[Write]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        writes = []
        for line in self._joined(complete.decode(errors="replace").splitlines()):
            found = _WRITE.match(line)
            if found and int(found["result"]) >= 0:
                writes.append(Write(_unescape(found["path"]).decode(errors="replace"),
                                    _unescape(found["data"])))
        return writes

    def _joined(self, lines: list[str]) -> list[str]:
        """Each call on one line: `PID write(...<unfinished ...>` waits for its `PID <... write
        resumed>) = N`, and the call counts where it completed (its bytes are in place then)."""
        whole = []
        for line in lines:
            if line.endswith(_UNFINISHED):
                pid = line.split(None, 1)[0]
                self.unfinished[pid] = line[:-len(_UNFINISHED)]
                continue
            resumed = _RESUMED.match(line)
            if resumed is not None:
                first = self.unfinished.pop(resumed["pid"], None)
                if first is None:
                    continue  # its first half was not a call we know: not a whole write
                line = first + resumed["rest"]
            whole.append(line)
        return whole


def _unescape(text: str) -> bytes:
    return codecs.escape_decode(text.encode())[0]
