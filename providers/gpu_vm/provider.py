"""The GpuVm dynamic provider: one libvirt domain that mirrors its host, with passthrough.

parse inputs -> gather facts and libvirt's view (one remote command) -> place (pure) ->
preflight (devices free, huge pages there, image present) -> XML (pure, schema-validated) ->
apply (one remote command: volume, seed, `virsh define --validate`, start) -> wait for the
guest's address (one remote command with a deadline) -> outputs. libvirt is driven with virsh
over the same pinned SSH connection as every other resource, so there is one host-key policy
and one key source. Delete shuts down gracefully with a deadline, then destroys, undefines
(with NVRAM) and removes the volumes it made.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)

from ..common import shell
from ..common.dynamic import HostResourceProvider
from ..errors import VelaError
from ..facts import parse_facts, run_gather
from ..facts.models import HostFacts
from ..host import Host
from . import guest
from .observe import (
    VOLUMES,
    VmObservations,
    held_devices,
    observe_script,
    owned_fields,
    parse_observations,
    paths,
    taken_devices,
)
from .placement import GIB_KIB, Layout, PlacementError, place
from .spec import GpuVmArgs
from .xml.domain import domain as domain_xml
from .xml.domain import render
from .xml.schema import SchemaError, validate
from .xml.spec import DomainSpec

# Inputs whose change means another domain (devices cannot be held twice: delete first).
REPLACE_ON = {"address", "port", "name", "gpus", "gpuSelector", "vfs"}
# Inputs that change the definition: applied at the next start, so a running guest restarts.
RESTART_ON = {"vcpus", "memoryGib", "wholeNodes", "reservedCpus", "image", "kernelBoot",
              "firmware", "guest", "domainType", "cpuModel", "hugepages", "network"}
LIVE = {"start", "waitTimeout", "shutdownTimeout", "user", "hostKey"}
OUTPUT_KEYS = ["uuid", "state", "addresses", "domainXml", "ncclTopology", "ncclEnvironment",
               "placement", "changes", "inSync", "drift"]


class GpuVmError(VelaError):
    """The guest cannot be made as asked; the message says why and what to do."""





def classify(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Which changed inputs apply live, need a restart, or need a new domain. Pure."""
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return {"replace": [key for key in changed if key in REPLACE_ON],
            "restart": [key for key in changed if key in RESTART_ON],
            "live": [key for key in changed if key not in REPLACE_ON | RESTART_ON]}


class GpuVmProvider(HostResourceProvider):
    """Pickled into every GpuVm resource's state: attributes are plain data only."""

    kind = "GpuVm"
    args_model = GpuVmArgs
    error = GpuVmError
    output_keys = OUTPUT_KEYS

    def diff(self, id_: str, olds: dict, news: dict) -> DiffResult:
        kinds = classify(self.inputs(olds), self.inputs(news))
        changed = any(kinds.values()) or olds.get("inSync") is False
        return DiffResult(changes=changed, replaces=kinds["replace"], delete_before_replace=True)

    def create(self, props: dict) -> CreateResult:
        spec = self.parse_inputs(props)
        outs = self._converge(spec, props)
        return CreateResult(outs["uuid"], outs)

    def update(self, id_: str, olds: dict, news: dict) -> UpdateResult:
        spec = self.parse_inputs(news)
        restart = bool(classify(self.inputs(olds), self.inputs(news))["restart"])
        return UpdateResult(self._converge(spec, news, restart=restart))

    def read(self, id_: str, props: dict) -> ReadResult:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        facts, observed = observe(host, spec)
        current = observed.domain(spec.name)
        if current is None:
            return ReadResult("", {})  # gone: refresh drops it from the state
        desired = props.get("domainXml") or ""
        drift = _drift(desired, current.xml) if desired else []
        outs = {**props, "state": current.state, "addresses": observed.addresses,
                "inSync": not drift and (current.running or not spec.start), "drift": drift}
        return ReadResult(id_, outs)

    def delete(self, id_: str, props: dict) -> None:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        _, observed = observe(host, spec)
        current = observed.domain(spec.name)
        if current is not None and not current.ours:
            raise GpuVmError(f"{host.name}: domain {spec.name!r} was not made by vela; "
                             f"leaving it alone")
        where = paths(spec)
        calls = []
        if current is not None:
            calls += [shell.call("vela_vm_stop", spec.name, spec.shutdown_timeout),
                      shell.call("vela_virsh", "undefine", "--nvram", spec.name)]
        calls += [shell.call("vela_remove_file", where["disk"]),
                  shell.call("vela_remove_file", where["seed"]),
                  shell.call("vela_remove_empty_dirs", VOLUMES)]
        host.run_script(shell.script(calls, preamble=VM_LIBRARY),
                        timeout=spec.shutdown_timeout + 300)

    # -- converging ------------------------------------------------------------------------------

    def _converge(self, spec: GpuVmArgs, props: dict, restart: bool = False) -> dict:
        host = self._host(spec)
        facts, observed = observe(host, spec)
        current = observed.domain(spec.name)
        if current is not None and not current.ours:
            raise GpuVmError(f"{host.name}: a domain named {spec.name!r} exists and was not made "
                             f"by vela: choose another name")
        layout = self._place(host, spec, facts, observed, current)
        domain_spec = self._domain_spec(spec, observed, current)
        element = domain_xml(domain_spec, layout)
        try:
            validate(element)
        except SchemaError as exc:
            raise GpuVmError(f"{host.name}: {exc}") from None
        xml = render(element)
        topology = guest.nccl_topology(layout, facts.cpu_vendor)
        calls, made = self._plan(spec, facts, observed, layout, current, xml, topology, restart)
        if spec.start and (calls or not observed.addresses):
            # In the same exec: one round trip applies and waits for the guest's address.
            calls.append(shell.call("vela_vm_wait_address", spec.name, spec.wait_timeout))
        if calls:
            host.run_script(shell.script(calls, preamble=VM_LIBRARY),
                            timeout=spec.wait_timeout + 600)
            facts, observed = observe(host, spec)
        defined = observed.domain(spec.name)
        if defined is None:
            raise GpuVmError(f"{host.name}: domain {spec.name} is not defined after apply")
        drift = _drift(xml, defined.xml)
        if drift:
            raise GpuVmError(f"{host.name}: libvirt changed what vela defined: {drift}")
        return outputs(spec, props, layout, defined, observed, xml, topology, made)

    def _place(self, host: Host, spec: GpuVmArgs, facts: HostFacts, observed: VmObservations,
               current) -> Layout:
        if current is not None and isinstance(spec.gpus, int) and spec.gpus:
            # Keep the GPUs a defined guest already has (placement is for new guests).
            gpus = [address for address in held_devices(current)
                    if address not in {vf.address for vf in spec.vfs}]
            if len(gpus) == spec.gpus:
                spec = spec.model_copy(update={"gpus": gpus})
        try:
            layout = place(spec, facts, taken_devices(observed, spec.name))
        except PlacementError as exc:
            raise GpuVmError(f"{host.name}: {exc}. Nothing was changed.") from None
        problems = preflight(spec, facts, observed, layout, new=current is None)
        if problems:
            raise GpuVmError(f"{host.name}: " + "; ".join(problems) + ". Nothing was changed.")
        return layout

    def _domain_spec(self, spec: GpuVmArgs, observed: VmObservations, current) -> DomainSpec:
        where = paths(spec)
        version = observed.libvirt_version or (0,)
        if spec.domain_type == "kvm" and version >= (9, 3):
            mode = "passthrough"  # with limit=bits
        else:
            mode = "emulate"
        boot = spec.kernel_boot
        return DomainSpec(
            name=spec.name, uuid=current.uuid if current else str(uuid.uuid5(
                uuid.NAMESPACE_URL, f"vela:{spec.address}:{spec.name}")),
            domain_type=spec.domain_type, cpu_model=spec.cpu_model, phys_bits_mode=mode,
            hugepage_kib=GIB_KIB if spec.hugepages else None, firmware=spec.firmware,
            disk=where["disk"] if spec.image else None,
            kernel=boot.kernel if boot else None, initrd=boot.initrd if boot else None,
            cmdline=boot.cmdline if boot else None, seed=where["seed"], network=spec.network,
            console_log=where["console"])

    def _plan(self, spec, facts, observed, layout, current, xml, topology, restart):
        where = paths(spec)
        calls: list[str] = []
        made: list[str] = []
        ids = {d.host_address: f"0x{facts.pci[d.host_address].vendor_id:04x}:"
               f"0x{facts.pci[d.host_address].device_id:04x}" for d in layout.devices}
        seed = guest.seed_image(spec, guest.tuning_script(spec, layout, ids, topology))
        if spec.image and where["disk"] not in observed.present:
            calls.append(shell.call("vela_vm_disk", spec.image.path,
                                    observed.image_format or "qcow2", where["disk"],
                                    f"{spec.image.size_gib}G"))
            made.append(f"volume {where['disk']}: create")
        # A restart-class change rewrites the seed too: the guest configuration lives there.
        if current is None or _drift(xml, current.xml) or restart:
            calls += [shell.call("vela_vm_file", where["seed"],
                                 base64.b64encode(seed).decode()),
                      shell.call("vela_vm_define", spec.name,
                                 base64.b64encode(xml.encode()).decode())]
            made.append(f"domain {spec.name}: " + ("define" if current is None else "redefine"))
            if current is not None and current.running and restart:
                calls.append(shell.call("vela_vm_stop", spec.name, spec.shutdown_timeout))
                made.append(f"domain {spec.name}: restart")
        running = current is not None and current.running and not (restart and made)
        if spec.start and not running:
            calls.append(shell.call("vela_virsh", "start", spec.name))
            made.append(f"domain {spec.name}: start")
        return calls, made



VM_LIBRARY = r'''
V="virsh -c qemu:///system"
vela_vm_file() {  # PATH BASE64: a guest file written atomically, readable by QEMU
  mkdir -p "$(dirname "$1")" && printf '%s' "$2" | base64 -d > "$1.tmp" && chmod 0644 "$1.tmp" \
    && mv -f "$1.tmp" "$1" || vela_fail "cannot write $1"
}
vela_vm_disk() {  # BASE FORMAT DISK SIZE: a copy-on-write volume on the base image
  mkdir -p "$(dirname "$3")"
  [ -e "$3" ] || qemu-img create -q -f qcow2 -F "$2" -b "$1" "$3" "$4" \
    || vela_fail "cannot create $3 on $1"
}
vela_vm_define() {  # NAME XML_BASE64: define, validated by the host's own libvirt schema
  xml="/run/vela-domain-$1.xml"
  printf '%s' "$2" | base64 -d > "$xml"
  out=$($V define --validate "$xml" 2>&1) || { rm -f "$xml"; vela_fail "virsh define $1: $out"; }
  rm -f "$xml"
}
vela_vm_stop() {  # NAME TIMEOUT: graceful shutdown with a deadline, then power off
  state=$($V domstate "$1" 2>/dev/null | head -n 1)
  [ "$state" = "shut off" ] && return 0
  $V shutdown "$1" > /dev/null 2>&1 || :
  waited=0
  while [ "$waited" -lt "$2" ]; do
    [ "$($V domstate "$1" 2>/dev/null | head -n 1)" = "shut off" ] && return 0
    sleep 2; waited=$((waited + 2))
  done
  $V destroy "$1" > /dev/null 2>&1 || :
}
vela_vm_wait_address() {  # NAME TIMEOUT: until the guest holds a DHCP lease
  waited=0
  while [ "$waited" -lt "$2" ]; do
    $V domifaddr "$1" --source lease 2>/dev/null | grep -q ipv4 && return 0
    sleep 3; waited=$((waited + 3))
  done
  vela_fail "guest $1 has no address after $2 s (is it booting? see its console log)"
}
'''


def preflight(spec: GpuVmArgs, facts: HostFacts, observed: VmObservations, layout: Layout,
              new: bool) -> list[str]:
    problems = []
    if spec.hugepages:
        if observed.hugetlbfs_for(GIB_KIB) is None:
            problems.append("no hugetlbfs mount serves 1 GiB pages: HostTuning's hugepages "
                            "setting (default_hugepagesz=1G) provides one, or mount hugetlbfs "
                            "with pagesize=1G and restart libvirtd")
        if new:
            for cell in layout.cells:
                node = facts.node(cell.host_node)
                pool = node.pool(GIB_KIB) if node else None
                free = pool.free if pool else 0
                needed = cell.memory_kib // GIB_KIB
                if needed > free:
                    problems.append(f"host NUMA node {cell.host_node} has {free} free 1 GiB huge "
                                    f"page(s); guest cell {cell.id} needs {needed}")
    if spec.image:
        if observed.image_format is None:
            problems.append(f"no readable base image at {spec.image.path}")
    if spec.kernel_boot:
        for path in (spec.kernel_boot.kernel, spec.kernel_boot.initrd):
            if path not in observed.present:
                problems.append(f"{path} does not exist on the host")
    if observed.network_active is False:
        problems.append(f"libvirt network {spec.network!r} is not active (virsh net-start "
                        f"{spec.network})")
    return problems


def _drift(desired: str, actual: str) -> list[str]:
    want, have = owned_fields(desired), owned_fields(actual)
    return [f"{key}: {have[key]} (wanted {want[key]})" for key in want if want[key] != have[key]]


def observe(host: Host, spec: GpuVmArgs) -> tuple[HostFacts, VmObservations]:
    text = run_gather(host, observe_script(spec))
    return parse_facts(host, text), parse_observations(text)


def outputs(spec: GpuVmArgs, props: dict, layout: Layout, defined, observed: VmObservations,
            xml: str, topology: str, made: list[str]) -> dict:
    return {
        **GpuVmProvider.inputs(props),
        "uuid": defined.uuid,
        "state": defined.state,
        "addresses": observed.addresses,
        "domainXml": xml,
        "ncclTopology": topology,
        "ncclEnvironment": guest.nccl_environment(layout),
        "placement": {
            "cells": [{"id": c.id, "hostNode": c.host_node, "hostCpus": c.host_cpus,
                       "memoryKib": c.memory_kib} for c in layout.cells],
            "devices": [{"hostAddress": d.host_address, "guestAddress": d.guest_address,
                         "kind": d.kind, "hostNode": d.host_node, "hostSwitch": d.host_switch,
                         "pairedWith": d.paired_with, "mac": d.mac} for d in layout.devices],
            "physBits": layout.phys_bits},
        "changes": made,
        "inSync": True,
        "drift": [],
    }
