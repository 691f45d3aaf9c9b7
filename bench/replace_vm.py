"""Benchmark: the time to replace a tenant's VM on a tuned host, the operation the paper says a
cloud does several times a day: destroy one GpuVm and create it again (`pulumi up --replace`),
with nothing else touched and no host reboot.

Runs through the real engine on a deployed stack (the Automation API, as scripts/up does; the
same backend and passphrase: run it with scripts/stack-env's environment, as below) and times
each step from the engine's own events.

    (source scripts/stack-env && .venv/bin/python bench/replace_vm.py --stack dev [--vm NAME])

Prints: the steps the engine ran (only the VM's replace is expected), the VM's delete (guest
stopped, domain undefined, its disk and seed removed, VFs back to the pool) and create
(placed, defined, started, until the guest has an address) in seconds, and the whole `up`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.runner import select_stack

GPU_VM_TYPE = "pulumi-python:dynamic/vela:GpuVm"


def vm_urn(stack, name: str | None) -> str:
    """The URN of GpuVm `name` (the first one when None) in the stack's state."""
    resources = stack.export_stack().deployment.get("resources", [])
    vms = [r["urn"] for r in resources if r.get("type") == GPU_VM_TYPE]
    if not vms:
        raise SystemExit(f"stack {stack.name} has no GpuVm: deploy it first (scripts/up)")
    if name is None:
        return vms[0]
    for urn in vms:
        if urn.endswith(f"::{name}"):
            return urn
    raise SystemExit(f"no GpuVm {name} in stack {stack.name}; it has: "
                     f"{', '.join(urn.rsplit('::', 1)[1] for urn in vms)}")


class StepClock:
    """Start and end time of every engine step, from the event stream."""

    def __init__(self) -> None:
        self.started: dict[tuple[str, str], float] = {}
        self.ended: dict[tuple[str, str], float] = {}

    def __call__(self, event) -> None:
        for kind, table in (("resource_pre_event", self.started),
                            ("res_outputs_event", self.ended)):
            found = getattr(event, kind, None)
            if found is not None:
                op = getattr(found.metadata.op, "value", found.metadata.op)  # a str Enum
                table[(found.metadata.urn.rsplit("::", 1)[1], op)] = time.monotonic()

    def seconds(self, name: str, op: str) -> float | None:
        key = (name, op)
        if key in self.started and key in self.ended:
            return self.ended[key] - self.started[key]
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--vm", help="the GpuVm to replace (default: the first)")
    options = parser.parse_args()
    stack = select_stack(options.stack)
    urn = vm_urn(stack, options.vm)
    name = urn.rsplit("::", 1)[1]
    clock = StepClock()
    print(f"replace_vm: replacing {name} on stack {options.stack}", flush=True)
    began = time.monotonic()
    result = stack.up(replace=[urn], on_event=clock, on_output=lambda line: None)
    total = time.monotonic() - began
    changed = {op: count for op, count in (result.summary.resource_changes or {}).items()
               if op != "same"}
    print(f"engine steps other than same: {changed}")
    for op in ("delete-replaced", "create-replacement", "replace"):
        seconds = clock.seconds(name, op)
        if seconds is not None:
            print(f"{name} {op:<20} {seconds:7.1f} s")
    print(f"whole `up --replace`     {total:7.1f} s")


if __name__ == "__main__":
    main()
