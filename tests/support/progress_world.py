"""World: a vela resource for tests of what `pulumi up` shows, not a product resource.

It is a `HostResourceProvider` like HostTuning, SriovPool and GpuVm, and converges through the
same loop (`providers.common.converge`: `look` with gather.sh, plan, apply rounds, verify), on a
fake host root (`root`, an HGX tree written by tests/support/hgx.py) through a `LocalHost`, so
that a test can run it through the real provider server and the real engine without touching
this machine. Its target: each file in `files` (path under the root -> content). A content
starting with "fail:" makes the file's change fail on the host the way a vela action does
(`vela_fail`, with the rest as its message).
"""

from __future__ import annotations

from typing import Any

import pulumi
from pydantic import BaseModel, ConfigDict

from providers.common import shell
from providers.common.converge import Converger, look
from providers.common.dynamic import HostResource, HostResourceProvider
from providers.common.plan import Change, Plan, Snapshot, file_changes
from providers.common.records import decoded, records
from providers.errors import VelaError
from providers.host import Host, LocalHost


class WorldError(VelaError):
    """The World could not be made as asked."""


class WorldArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str
    port: int = 22
    root: str
    files: dict[str, str]


class WorldProvider(HostResourceProvider):
    kind = "World"
    args_model = WorldArgs
    error = WorldError
    output_keys = ["changes"]
    replace_on = set()

    def _host(self, spec: WorldArgs) -> Host:
        return LocalHost(spec.root, name=f"{spec.address}:{spec.port}")

    def converge(self, host: Host, spec: WorldArgs, props: dict, previous: dict | None) -> dict:
        script = "\n".join([shell.OBSERVE_LIBRARY,
                            *(shell.call("observe_file", path) for path in sorted(spec.files))])

        def plan_for(now: Snapshot, _round) -> Plan:
            wanted = {path: content for path, content in spec.files.items()
                      if not content.startswith("fail:")}
            changes = file_changes(wanted, now.observed)
            changes += [Change(kind="file", subject=path, detail="write",
                               calls=[shell.call("vela_fail", content.removeprefix("fail:"))])
                        for path, content in sorted(spec.files.items())
                        if content.startswith("fail:")]
            return Plan(changes=changes)

        converger = Converger(host=host, look=lambda: look(host, script, _files),
                              plan_for=plan_for, error=WorldError, apply_timeout=60)
        done = converger.converge(converger.look())
        return {**self.inputs(props), "changes": done.changes}

    def remove(self, host: Host, spec: WorldArgs, props: dict) -> None:
        for path in spec.files:
            host.run(["rm", "-f", host.sysroot.rstrip("/") + path], timeout=30)

    def resource_id(self, spec: WorldArgs, outputs: dict) -> str:
        return f"{spec.address}:{spec.port}/world"


def _files(text: str) -> dict[str, str | None]:
    return {subject: decoded(value) if name == "content" else None
            for kind, subject, name, value in records(text) if kind == "file"}


class World(HostResource):
    provider_class = WorldProvider
    changes: pulumi.Output[list[str]]


def program() -> None:
    """The stack: one World per entry of `vela:worlds` (name -> inputs)."""
    worlds: dict[str, dict[str, Any]] = pulumi.Config("vela").require_object("worlds")
    for name, args in worlds.items():
        world = World(name, args)
        pulumi.export(name, world.changes)
