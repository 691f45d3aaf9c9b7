"""What `pulumi up` shows while a vela resource works and when it fails, through the real
provider server and the real engine, with World (tests/support/progress_world.py): a resource
on the shared provider base and converge loop, acting on a fake host root.

- Progress: each step (facts read, the plan, each round applied, verified) reaches the engine's
  Log service with the resource's URN as it happens, and `pulumi up` prints it on the
  resource's row, with the time since the call began; ephemeral, so the summary at the end
  does not repeat it (providers/common/progress.py says why this path and not pulumi.log).
- Errors: the first line names the host, the call, the step and what to do; no traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
from concurrent import futures

import grpc
import pytest
from google.protobuf import empty_pb2
from pulumi import automation as auto
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc

from tests.support import provider_harness
from tests.support.cli import CliStack
from tests.support.hgx import hgx_a100
from tests.support.progress_world import WorldProvider, program
from tests.support.provider_harness import ProviderCallError, ProviderServer, with_provider

HOST = "127.0.0.1:22"  # World's host name; nothing connects to it (a LocalHost on the root)
STEPS = ["facts read", "plan: 1 change(s)", "applying 1 change(s), round 1: file /etc/world/a: "
         "create", "facts read", "round 1 applied in", "verified: 1 change(s) made, 0 reboot(s)",
         "done"]


@pytest.fixture
def root(tmp_path):
    host, _ = hgx_a100()
    return host.write(tmp_path / "root")


class Engine(engine_pb2_grpc.EngineServicer):
    """The engine's Log service, as the CLI serves it to the providers it starts."""

    def __init__(self) -> None:
        self.logs: list[engine_pb2.LogRequest] = []

    def Log(self, request, context):  # noqa: N802 (the gRPC method's name)
        self.logs.append(request)
        return empty_pb2.Empty()


@pytest.fixture
def engine(monkeypatch):
    """A Log service, and the provider server started as the engine starts it: with the
    engine's address as its argument (provider_plugin.go NewProvider)."""
    service = Engine()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    engine_pb2_grpc.add_EngineServicer_to_server(service, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    popen = subprocess.Popen

    def start(argv, **options):
        return popen([*argv, address] if argv[-1] == "pulumi.dynamic" else argv, **options)

    monkeypatch.setattr(provider_harness.subprocess, "Popen", start)
    yield service
    server.stop(0)


def _steps(lines: list[str], call: str = "create") -> list[str]:
    prefix = f"{HOST}: World {call}: "
    assert all(line.startswith(prefix) for line in lines), lines
    assert all(re.search(r" \[\d+\.\d s\]$", line) for line in lines), lines
    return [re.sub(r" \[\d+\.\d s\]$", "", line.removeprefix(prefix)) for line in lines]


def test_each_step_reaches_the_engine_log_on_the_resource_as_it_happens(engine, root, tmp_path):
    inputs = with_provider(WorldProvider(), {"address": "127.0.0.1", "root": str(root),
                                             "files": {"/etc/world/a": "one"}})
    with ProviderServer(log=tmp_path / "provider.log") as server:
        _, outputs = server.create("w0", inputs)
        assert outputs["changes"] == ["file /etc/world/a: create"]
        created = list(engine.logs)
        server.update("w0", "id", outputs, {**inputs, "files": {"/etc/world/a": "two"}})
    assert {(log.urn, log.severity, log.ephemeral) for log in created} == \
        {(server.urn("w0"), engine_pb2.INFO, True)}
    steps = _steps([log.message for log in created])
    assert [step for step, want in zip(steps, STEPS, strict=True) if step.startswith(want)] \
        == steps
    assert _steps([log.message for log in engine.logs[len(created):]], "update")[-1] == "done"
    assert (root / "etc/world/a").read_text() == "two"
    assert (tmp_path / "provider.log").read_text() == ""  # all went to the engine


def test_a_failed_step_reads_host_call_step_and_fix_in_the_first_line(engine, root, tmp_path):
    inputs = with_provider(WorldProvider(), {"address": "127.0.0.1", "root": str(root),
                                             "files": {"/etc/world/a": "fail:disk full"}})
    with ProviderServer(log=tmp_path / "provider.log") as server, \
            pytest.raises(ProviderCallError) as caught:
        server.create("w0", inputs)
    assert not caught.value.traceback
    first, _, rest = caught.value.details.partition("\n")
    assert re.fullmatch(
        rf"{HOST}: World create failed while applying 1 change\(s\), round 1 \(\d+\.\d s in\): "
        r"command `sh -s --` exited with status 1: disk full; fix what the host reports, then "
        r"run `pulumi up` again: it reads the host first and applies only what is still "
        r"missing", first), first
    assert rest == "vela: disk full"
    assert _steps([log.message for log in engine.logs])[-1] == \
        "applying 1 change(s), round 1: file /etc/world/a: write"


def test_pulumi_up_prints_each_step_on_the_resource_row_and_errors_without_traceback(
        root, tmp_path):
    """The real engine and display (the CLI without a terminal, as CI and the Automation API
    run it): each step prints the resource's row again with the step; the end summary does
    not list them again. A failure prints the first line as the error, and no traceback."""
    stack = CliStack(tmp_path, "test", program=program, packages=["providers", "tests"])
    world = {"address": "127.0.0.1", "root": str(root), "files": {"/etc/world/a": "one"}}
    try:
        stack.configure({"vela:worlds": json.dumps({"w0": world})})
        printed: list[str] = []
        stack.stack.up(on_output=printed.append)
        rows = [line for line in printed if re.match(r"^ \+ +pulumi-python:dynamic:Resource w0 "
                                                     r"creating \(\d+s\) ", line)]
        steps = _steps([re.sub(r"^.* creating \(\d+s\) ", "", row) for row in rows])
        shown = ["plan: 1 change(s)", "applying 1 change(s), round 1: file /etc/world/a: create",
                 "verified: 1 change(s) made, 0 reboot(s)", "done"]
        assert [step for step in steps if step in shown] == shown, steps
        assert "Diagnostics:" not in "\n".join(printed)

        stack.configure({"vela:worlds": json.dumps({
            "w0": world, "w1": {**world, "files": {"/etc/world/b": "fail:disk full"}}})})
        with pytest.raises(auto.errors.CommandError) as failure:
            stack.up()
        text = str(failure.value)
        assert "Traceback" not in text and 'File "' not in text, text
        assert re.search(rf"{HOST}: World create failed while applying 1 change\(s\), round 1 "
                         r"\(\d+\.\d s in\): command `sh -s --` exited with status 1: disk full; "
                         r"fix what the host reports", text), text
    finally:
        stack.destroy()
        stack.remove()
