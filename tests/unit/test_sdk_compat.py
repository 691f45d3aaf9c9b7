"""The workaround for the SDK's provider-serialization leak (see providers/sdk_compat.py)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pulumi

from tests.support.probe_provider import HostProbeResource
from tests.support.provider_harness import PROJECT_ROOT


class _CountingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.names: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.names.append(args.name)
        return [f"{args.name}-id", args.inputs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


def test_two_thousand_dynamic_resources_in_one_process():
    mocks = _CountingMocks()
    pulumi.runtime.set_mocks(mocks, project="vela", stack="test", preview=False)
    original = pickle._Pickler._batch_setitems

    @pulumi.runtime.test
    def build():
        resources = [HostProbeResource(f"node{index}", {"address": "10.0.0.1", "port": 22,
                                                         "hostKey": "ssh-ed25519 AAAA"})
                     for index in range(2000)]
        return pulumi.Output.all(*[resource.urn for resource in resources[-3:]])

    build()
    assert len(mocks.names) == 2000 and len(set(mocks.names)) == 2000
    assert pickle._Pickler._batch_setitems is original


def test_the_pinned_sdk_still_needs_the_workaround():
    """Without the guard the same program overflows the stack. When a new SDK passes this
    test's opposite, the workaround can go."""
    script = textwrap.dedent("""
        import pulumi
        from pulumi.dynamic import ResourceProvider, Resource
        class Provider(ResourceProvider):
            def __init__(self):
                self.limits = {"gather_timeout": 120.0}
        class Probe(Resource, module="vela", name="Probe"):
            pass
        class Mocks(pulumi.runtime.Mocks):
            def new_resource(self, args): return [args.name, args.inputs]
            def call(self, args): return {}
        pulumi.runtime.set_mocks(Mocks(), preview=False)
        built = 0
        try:
            for index in range(2000):
                Probe(Provider(), f"r{index}", {"x": 1})
                built += 1
        except RecursionError:
            print("RecursionError after", built)
        else:
            print("no error")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert "RecursionError after" in result.stdout, result.stdout + result.stderr
