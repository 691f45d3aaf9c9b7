"""The GpuVm dynamic provider: one libvirt domain that mirrors its host, with passthrough.

parse inputs -> gather facts and libvirt's view (one remote command) -> place (pure) ->
preflight (devices free, huge pages there, image present) -> XML (pure, schema-validated) ->
plan (pure) -> apply (one remote command: volume, seed, `virsh define --validate`, start, wait
for the guest's address with a deadline) -> gather again -> verify: the shared converge loop of
`providers.common`. libvirt is driven with virsh over the same pinned SSH connection as every
other resource, so there is one host-key policy and one key source. Delete plans the removal
through the same loop: shut down gracefully with a deadline, then destroy, undefine (with
NVRAM) and remove the volumes it made.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import ReadResult

from ..common.converge import Converger, Outcome, look
from ..common.dynamic import HostResourceProvider, changed_inputs
from ..common.plan import Snapshot
from ..errors import CommandFailed, GpuVmError
from ..host import Host
from .observe import Domain, VmObservations, observe_script, parse_observations
from .placement import gpu_nic_pairs
from .plan import drift, plan, plan_removal, removal_finish
from .spec import GpuVmArgs
from .target import DomainTarget, desired_domain

# Inputs whose change means another domain (devices cannot be held twice: delete first).
REPLACE_ON = {"address", "port", "name", "gpus", "gpuSelector", "vfs", "numaNodes", "hostShare"}
# Inputs that change the definition: applied at the next start, so a running guest restarts.
# Every other input (start, timeouts, user, hostKey) applies without touching the guest.
RESTART_ON = {"vcpus", "memoryGib", "wholeNodes", "reservedCpus", "image", "kernelBoot",
              "firmware", "guest", "domainType", "cpuModel", "hugepages", "network"}
DRIFT_HINT = (" - libvirt keeps the domain otherwise than vela defined it (the fields above); "
              "check `virsh dumpxml` on the host and the libvirt version")
PLACEMENT_RACED = 75  # vela_vm_define: another domain was defined since placement saw the host
PLACEMENT_ATTEMPTS = 5
OUTPUT_KEYS = ["uuid", "state", "addresses", "domainXml", "ncclTopology", "ncclEnvironment",
               "nvlink", "placement", "changes", "inSync", "drift"]


def classify(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Which changed inputs need a new domain, or a restart (the others apply live). Pure."""
    changed = changed_inputs(old, new)
    return {"replace": [key for key in changed if key in REPLACE_ON],
            "restart": [key for key in changed if key in RESTART_ON]}


class GpuVmProvider(HostResourceProvider):
    """Pickled into every GpuVm resource's state: attributes are plain data only."""

    kind = "GpuVm"
    args_model = GpuVmArgs
    error = GpuVmError
    output_keys = OUTPUT_KEYS
    replace_on = REPLACE_ON

    def converge(self, host: Host, spec: GpuVmArgs, props: dict, previous: dict | None) -> dict:
        restart = previous is not None and bool(
            classify(self.inputs(previous), self.inputs(props))["restart"])
        return converge_desired(host, spec, props, restart=restart)

    def remove(self, host: Host, spec: GpuVmArgs, props: dict) -> None:
        remove_domain(host, spec)

    def resource_id(self, spec: GpuVmArgs, outputs: dict) -> str:
        return outputs["uuid"]

    def read(self, id_: str, props: dict) -> ReadResult:
        spec = self.parse_inputs(props)
        current = observe(self._host(spec), spec).observed
        domain = current.domain(spec.name)
        if domain is None:
            return ReadResult("", {})  # gone: refresh drops it from the state
        desired = props.get("domainXml") or ""
        differs = drift(desired, domain.xml) if desired else []
        outs = {**props, "state": domain.state, "addresses": current.addresses,
                "inSync": not differs and (domain.running or not spec.start), "drift": differs}
        return ReadResult(id_, outs)


# -- converging ------------------------------------------------------------------------------

def observe(host: Host, spec: GpuVmArgs) -> Snapshot[VmObservations]:
    """Hardware facts and libvirt's view, from one remote command."""
    return look(host, observe_script(spec), parse_observations)


def converger(host: Host, spec: GpuVmArgs, plan_for) -> Converger[VmObservations]:
    """The shared converge loop; a guest never needs the host rebooted."""
    return Converger(host=host, look=lambda: observe(host, spec), plan_for=plan_for,
                     error=GpuVmError, hints={"domain": DRIFT_HINT},
                     # a restart stops, starts and waits for the address in one command
                     apply_timeout=spec.wait_timeout + spec.shutdown_timeout + 600)


def converge_desired(host: Host, spec: GpuVmArgs, props: dict, *,
                     restart: bool = False) -> dict:
    """Create and update: place, render, define, start, wait for the address; the outputs.

    Placement is serialized per host by `vela_vm_define`: under the host's lock it defines
    only if the other domains are those placement saw, else exits 75 and this places again
    (another VM created at the same moment took its devices and CPUs first)."""
    for attempt in range(1, PLACEMENT_ATTEMPTS + 1):
        now = observe(host, spec)
        target = desired_domain(host.name, spec, now.facts, now.observed)
        try:
            done = converger(host, spec, lambda snapshot, at, target=target: plan(
                spec, target, snapshot.observed, at, restart=restart)).converge(now)
            break
        except CommandFailed as exc:
            if exc.exit_code != PLACEMENT_RACED or attempt == PLACEMENT_ATTEMPTS:
                raise
    defined = done.snapshot.observed.domain(spec.name)
    if defined is None:
        raise GpuVmError(f"{host.name}: domain {spec.name} is not defined after apply")
    return outputs(spec, props, target, defined, done.snapshot.observed, done.changes)


def remove_domain(host: Host, spec: GpuVmArgs) -> Outcome | None:
    """Delete: stop and undefine the guest vela made, remove its volumes. A domain of that
    name that vela did not make is left alone, and said so."""
    now = observe(host, spec)
    current = now.observed.domain(spec.name)
    if current is not None and not current.ours:
        raise GpuVmError(f"{host.name}: domain {spec.name!r} was not made by vela; "
                         f"leaving it alone")
    return converger(host, spec, lambda snapshot, _: plan_removal(spec, snapshot.observed)) \
        .converge(now, finish=removal_finish())


def outputs(spec: GpuVmArgs, props: dict, target: DomainTarget, defined: Domain,
            observed: VmObservations, made: list[str]) -> dict:
    layout = target.layout
    return {
        **GpuVmProvider.inputs(props),
        "uuid": defined.uuid,
        "state": defined.state,
        "addresses": observed.addresses,
        "domainXml": target.xml,
        "ncclTopology": target.topology,
        "ncclEnvironment": dict(target.environment),
        "nvlink": layout.nvlink,
        "placement": {
            "cells": [{"id": c.id, "hostNode": c.host_node, "hostCpus": c.host_cpus,
                       "memoryKib": c.memory_kib} for c in layout.cells],
            "devices": [{"hostAddress": d.host_address, "guestAddress": d.guest_address,
                         "kind": d.kind, "hostNode": d.host_node, "hostSwitch": d.host_switch,
                         "pairedWith": d.paired_with, "gpudirect": d.gpudirect, "mac": d.mac}
                      for d in layout.devices],
            "gpuNicPairs": gpu_nic_pairs(layout),
            "physBits": layout.phys_bits},
        "changes": made,
        "inSync": True,
        "drift": [],
    }
