"""Progress of a resource's create, update and delete, shown by `pulumi up` as it happens.

`operation(host, kind, action)` frames one engine call (HostResourceProvider opens it);
inside it, `report(step, detail)` sends one line, "HOST: KIND ACTION: STEP: DETAIL [12.3 s]"
(the time since the call began), and `begin(step)` only records what is being done. A
VelaError leaving the operation names the host, the action and that step in its first line
(`VelaError.during`). Outside an operation (unit tests, the lab) both do nothing.

How a line reaches the user (pulumi SDK 3.272, engine and CLI v3.274.1):
- `pulumi.log.info` does not reach the engine from a dynamic provider: the SDK's provider
  server configures its Settings without an engine address (`get_provider` in
  sdk/python/lib/pulumi/dynamic/__main__.py: `configure(Settings(project=..., stack="stack",
  organization="organization"))`), so `get_engine()` is None and `log.info` falls back to
  `print("info: " + msg, file=sys.stderr)` (sdk/python/lib/pulumi/log.py; `log.debug` drops
  the message).
- The engine does show a dynamic provider's stderr, line by line, as info diagnostics with no
  resource, on the stack's row (sdk/go/common/resource/plugin/plugin.go, newPlugin's
  `runtrace`: `ctx.Diag.Infoerrf(diag.StreamMessage("" /*urn*/, msg, ...))`, only for
  `isDynamicPluginBinary`; other providers' output is logged at debug level only).
- Better: the engine starts every resource provider with its own gRPC address as the first
  argument (provider_plugin.go NewProvider: `newPlugin(..., []string{host.ServerAddr()}, ...)`)
  and the SDK's server ignores its arguments. That address serves the Engine service, whose
  `Log` (pkg/host/host_server.go `hostServer.Log`) takes a severity, a message, a URN and
  `ephemeral`; ephemeral messages go to the engine's status sink (`LogStatus`). The display
  shows a resource's latest message on its row while it runs: in a terminal in the row's
  status column, and without one (CI, the Automation API) each new message prints the row
  again (pkg/backend/display/progress.go processNormalEvent -> rowUpdated; rows.go
  `LastDiag`). Ephemeral messages are left out of the Diagnostics summary at the end
  (progress.go printDiagnostics: `if v.Ephemeral { continue }`), so a 400-node `up` does not
  end with thousands of progress lines, and they still come through the event stream.
- The URN: the SDK hands create/update/delete only the properties; the engine's request,
  which carries the URN, is a local (`request`) of the SDK servicer's method that called us,
  on this same thread (`DynamicResourceProviderServicer.Create` and its
  `_abort_with_traceback` wrapper). `_calling_urn` reads it from there. Where it is not found
  (another SDK release), lines go with no URN: the engine shows them on the stack's row.
Where there is no engine to talk to (the provider server started by hand, or a failed Log
call), lines go to stderr, which the engine also shows.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..errors import VelaError

Sink = Callable[[str], None]

# Long enough for a busy engine, short enough that a dead one does not hold a host change up.
LOG_TIMEOUT = 5.0
SERVER_MODULE = "DynamicResourceProviderServicer"  # marks the SDK's server in its globals


@dataclass
class Operation:
    host: str
    kind: str  # "HostTuning"
    action: str  # "create", "update", "delete"
    sink: Sink
    started: float = field(default_factory=time.monotonic)
    step: str = "starting"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str) -> str:
        return f"{self.host}: {self.kind} {self.action}: {text} [{self.elapsed:.1f} s]"


_current: ContextVar[Operation | None] = ContextVar("vela_operation", default=None)


@contextmanager
def operation(host: str, kind: str, action: str, sink: Sink | None = None
              ) -> Iterator[Operation]:
    """One engine call on one host. A VelaError that leaves it says where it happened."""
    current = Operation(host, kind, action, sink or engine_sink())
    token = _current.set(current)
    try:
        yield current
    except VelaError as error:
        error.during = (current.host, f"{kind} {action} failed while {current.step} "
                                      f"({current.elapsed:.1f} s in)")
        raise
    finally:
        _current.reset(token)


def begin(step: str) -> None:
    """What the operation is doing now (for an error's first line), without a line."""
    current = _current.get()
    if current is not None:
        current.step = step


def report(step: str, detail: str = "") -> None:
    """One progress line, "STEP: DETAIL", and STEP is what the operation is doing now."""
    current = _current.get()
    if current is None:
        return
    current.step = step
    current.sink(current.line(f"{step}: {detail}" if detail else step))


def listing(items: list[str], limit: int = 4) -> str:
    """Items for one line: the first `limit`, then how many more."""
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


# -- where lines go ------------------------------------------------------------------------------

def stderr_sink(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def engine_sink() -> Sink:
    """Lines to the engine that started this provider process, on the calling resource's row;
    stderr where there is no engine."""
    address = engine_address()
    if address is None:
        return stderr_sink
    return EngineLog(address, _calling_urn())


def engine_address() -> str | None:
    """The engine's address, when this process is the SDK's provider server that the engine
    started (`python -u -m pulumi.dynamic ADDRESS`, the plugin script passing "$@")."""
    main = sys.modules.get("__main__")
    if main is None or not hasattr(main, SERVER_MODULE) or len(sys.argv) < 2:
        return None
    host, _, port = sys.argv[1].rpartition(":")
    return sys.argv[1] if host and port.isdigit() else None


def _calling_urn() -> str:
    """The URN of the engine request this thread is serving ("" when not found): the
    `request` argument of the SDK server's method below us on the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if SERVER_MODULE in frame.f_globals:
            urn = getattr(frame.f_locals.get("request"), "urn", None)
            if isinstance(urn, str):
                return urn
        frame = frame.f_back
    return ""


class EngineLog:
    """Sends lines to the engine's Log service as ephemeral info for one resource."""

    _stubs: dict[str, object] = {}
    _lock = threading.Lock()

    def __init__(self, address: str, urn: str) -> None:
        self.address, self.urn = address, urn

    def __call__(self, line: str) -> None:
        import grpc
        from pulumi.runtime.proto import engine_pb2

        request = engine_pb2.LogRequest(severity=engine_pb2.INFO, message=line, urn=self.urn,
                                        ephemeral=True)
        try:
            self._stub().Log(request, timeout=LOG_TIMEOUT)
        except grpc.RpcError:
            stderr_sink(line)  # the engine is gone or busy: the line still reaches its log

    def _stub(self):
        with self._lock:
            stub = self._stubs.get(self.address)
            if stub is None:
                import grpc
                from pulumi.runtime.proto import engine_pb2_grpc

                stub = engine_pb2_grpc.EngineStub(grpc.insecure_channel(self.address))
                self._stubs[self.address] = stub
            return stub
