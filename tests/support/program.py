"""Run the real program (`__main__.py`) under Pulumi's mocks and record every registration.

`RecordingMonitor` keeps what the engine would receive for each resource: type, name, parent,
dependencies, provider reference and options (deleteBeforeReplace, additionalSecretOutputs),
plus the inputs. Mocks answer like a fresh stack: outputs are the inputs, and every dynamic
resource's list outputs are empty until the providers run.
"""

from __future__ import annotations

import gc
import runpy
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

from tests.support.cli import config_strings
from tests.support.provider_harness import PROJECT_ROOT

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    parent: str
    dependencies: list[str]
    provider: str
    delete_before_replace: bool
    additional_secret_outputs: list[str]
    inputs: dict[str, Any]
    wire: dict[str, Any]  # the inputs as sent, secrets still wrapped in their signature


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        outputs = dict(args.inputs)
        if args.typ.startswith("pulumi-python:dynamic"):
            outputs.update({"vfs": [], "addresses": []})
        return [f"{args.name}-id", outputs]

    def call(self, args):
        return {}


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method's name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(Registration(
                urn=response.urn, type=request.type, name=request.name, parent=request.parent,
                dependencies=list(request.dependencies), provider=request.provider,
                delete_before_replace=request.deleteBeforeReplace,
                additional_secret_outputs=list(request.additionalSecretOutputs),
                inputs=self._inputs(request),
                wire=json_format.MessageToDict(request.object)))
        return response

    @staticmethod
    def _inputs(request) -> dict[str, Any]:
        from pulumi.runtime import rpc

        return {key: rpc.unwrap_rpc_secret(value)
                for key, value in rpc.deserialize_properties(request.object).items()}


@dataclass
class ProgramRun:
    namespace: dict[str, Any]
    registrations: list[Registration]
    exports: dict[str, Any] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[Registration]:
        """Registrations of a resource kind: HostTuning, SriovPool, GpuVm, VelaCluster."""
        return [r for r in self.registrations if r.type.rsplit(":", 1)[-1] == kind]

    def by_name(self) -> dict[str, Registration]:
        return {r.name: r for r in self.registrations}


def lab_like_nodes(count: int) -> list[dict[str, Any]]:
    return [{"name": f"node-{index}", "address": f"10.0.{index // 250}.{index % 250 + 1}",
             "hostKey": HOST_KEY} for index in range(count)]


def base_config(nodes: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
    config = {
        "vela:nodes": nodes,
        "vela:shape": {"vmsPerNode": 1, "gpusPerVm": 8, "nicPorts": ["ens1f0", "ens2f0"],
                       "vfsPerPort": 1, "wholeNodes": True},
        "vela:image": {"path": "/var/lib/vela/images/ubuntu-22.04.qcow2"},
        "vela:sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n",
        **extra}
    return config_strings(config)


def run_program(config: dict[str, str], *, stack: str = "dev",
                secret_keys: tuple[str, ...] = ("vela:sshPrivateKey",)) -> ProgramRun:
    """Run __main__.py as the CLI would for a preview; returns what it registered."""
    monitor = RecordingMonitor(_Mocks())
    pulumi.runtime.set_mocks(_Mocks(), project="vela", stack=stack, preview=True,
                             monitor=monitor)
    pulumi.runtime.set_all_config(config, secret_keys=list(secret_keys))
    try:
        namespace = runpy.run_path(str(PROJECT_ROOT / "__main__.py"))
        _sync_await(wait_for_rpcs())
    finally:
        pulumi.runtime.set_all_config({})
        # The program freezes what it declared (components.program.declare), which is right
        # for the language host's process, that exits after one run; this process runs many.
        gc.unfreeze()
    return ProgramRun(namespace=namespace, registrations=monitor.registrations)
