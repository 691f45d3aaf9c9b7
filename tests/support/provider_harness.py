"""Drive dynamic providers through the real provider server, as the Pulumi engine does.

The Pulumi CLI runs `python -u -m pulumi.dynamic` in the program directory, reads the port it
prints, and calls the ResourceProvider gRPC service: Configure once, then Check, Diff, Create,
Update, Read and Delete with property Structs that carry the pickled provider in `__provider`.
`ProviderServer` does the same, so provider tests exercise unpickling, the 4-thread pool, the
float-only number encoding and the error path exactly as a real `pulumi up` would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

import providers  # noqa: F401  (the SDK workaround must be in place before serializing)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "__provider"
UNKNOWN = rpc.UNKNOWN  # how the engine sends a value not known yet (preview)
# The engine sets no deadline on provider calls: providers enforce their own (waitTimeout,
# rebootTimeout, up to 7200 s). This one only stops a hung test, so it must exceed every
# provider deadline a test sets (the lab's guest has 1200 s to boot).
CALL_DEADLINE = 7800.0


class ProviderCallError(Exception):
    """A provider method raised. `message` is what the user would read."""

    def __init__(self, call: str, details: str) -> None:
        self.call = call
        self.details = details
        # A traceback (an unexpected exception) ends with "Type: message"; a vela error arrives
        # as its message alone (providers/sdk_compat.py).
        lines = [line for line in details.strip().splitlines() if line.strip()]
        self.traceback = details.startswith("Traceback (most recent call last)")
        self.message = (lines[-1] if lines else details) if self.traceback else details.strip()
        super().__init__(f"{call} failed: {self.message}")


@dataclass
class Diff:
    changes: bool | None
    replaces: list[str] = field(default_factory=list)
    delete_before_replace: bool = False


def to_struct(props: dict[str, Any]) -> struct_pb2.Struct:
    """Properties as the engine encodes them: every number becomes a double."""
    struct = struct_pb2.Struct()
    struct.update(props)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return rpc.deserialize_properties(struct, True)


class ProviderServer:
    """One provider process, as one `pulumi up` has. Use as a context manager."""

    def __init__(self, *, config: dict[str, str] | None = None, project: str = "vela",
                 stack: str = "test", cwd: Path = PROJECT_ROOT, log: Path | None = None) -> None:
        self.project, self.stack = project, stack
        self.cwd = cwd
        self.config = config or {}
        self.log = log
        self.process: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None
        self.stub: provider_pb2_grpc.ResourceProviderStub | None = None

    def __enter__(self) -> ProviderServer:
        env = {**os.environ, "PULUMI_PROJECT": self.project, "PULUMI_STACK": self.stack}
        stderr = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.dynamic"],
                                        cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=stderr)
        port = int(self.process.stdout.readline())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)
        self._call("Configure", provider_pb2.ConfigureRequest(
            variables=self.config, args=to_struct(self.config), acceptSecrets=True,
            acceptResources=True))
        return self

    def __exit__(self, *exc_info) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    # -- engine calls ----------------------------------------------------------------------------

    def urn(self, name: str, type_: str = "pulumi-python:dynamic:Resource") -> str:
        """A resource's URN from its name; a caller that has the real URN passes it instead."""
        if name.startswith("urn:pulumi:"):
            return name
        return f"urn:pulumi:{self.stack}::{self.project}::{type_}::{name}"

    def check(self, name: str, olds: dict, news: dict) -> tuple[dict, list[tuple[str, str]]]:
        response = self._call("Check", provider_pb2.CheckRequest(
            urn=self.urn(name), olds=to_struct(olds), news=to_struct(news)))
        failures = [(failure.property, failure.reason) for failure in response.failures]
        return from_struct(response.inputs), failures

    def diff(self, name: str, id_: str, olds: dict, news: dict) -> Diff:
        response = self._call("Diff", provider_pb2.DiffRequest(
            id=id_, urn=self.urn(name), olds=to_struct(olds), news=to_struct(news)))
        changes = {provider_pb2.DiffResponse.DIFF_SOME: True,
                   provider_pb2.DiffResponse.DIFF_NONE: False}.get(response.changes)
        return Diff(changes, list(response.replaces), response.deleteBeforeReplace)

    def create(self, name: str, props: dict) -> tuple[str, dict]:
        response = self._call("Create", provider_pb2.CreateRequest(
            urn=self.urn(name), properties=to_struct(props)))
        return response.id, from_struct(response.properties)

    def update(self, name: str, id_: str, olds: dict, news: dict) -> dict:
        response = self._call("Update", provider_pb2.UpdateRequest(
            id=id_, urn=self.urn(name), olds=to_struct(olds), news=to_struct(news)))
        return from_struct(response.properties)

    def read(self, name: str, id_: str, props: dict) -> tuple[str, dict]:
        response = self._call("Read", provider_pb2.ReadRequest(
            id=id_, urn=self.urn(name), properties=to_struct(props)))
        return response.id, from_struct(response.properties)

    def delete(self, name: str, id_: str, props: dict) -> None:
        self._call("Delete", provider_pb2.DeleteRequest(
            id=id_, urn=self.urn(name), properties=to_struct(props)))

    def _call(self, method: str, request):
        try:
            return getattr(self.stub, method)(request, timeout=CALL_DEADLINE)
        except grpc.RpcError as exc:
            raise ProviderCallError(method, exc.details() or str(exc)) from None


def with_provider(provider, props: dict) -> dict:
    """Inputs as a dynamic Resource registers them: the props plus the pickled provider."""
    return {**props, PROVIDER_KEY: serialize_provider(provider)}
