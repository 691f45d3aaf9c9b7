"""GpuVm's changes: from the domain it wants and libvirt's view to an ordered list. Pure.

A domain is compared by the fields vela owns (`owned_fields`), never as a whole XML string. A
restart-class input change redefines the domain and restarts a running guest once (the first
round of a converge run); libvirt applies a new definition at the next start. Removal stops the
guest gracefully with a deadline, undefines it with its NVRAM, and removes the volumes vela
made.
"""

from __future__ import annotations

import base64

from ..common import shell
from ..common.plan import Change, Plan, Round
from .observe import FAILED, VOLUMES, VmObservations, owned_fields, paths
from .spec import GpuVmArgs
from .target import DomainTarget


def plan(spec: GpuVmArgs, target: DomainTarget, observed: VmObservations, at: Round, *,
         restart: bool = False) -> Plan:
    where = paths(spec)
    current = observed.domain(spec.name)
    restart = restart and at.number == 0 and current is not None
    changes: list[Change] = []
    differs = drift(target.xml, current.xml) if current is not None else []
    defining = current is None or bool(differs) or restart
    if defining and observed.validator:
        # First, before the volume and the seed: the XML against the schema of the libvirt
        # that will define it. (Without virt-xml-validate there, desired_domain validated here
        # with the same release's schema, or refused.)
        changes.append(Change(kind="domain", subject=spec.name,
                              detail="validate against the host's libvirt schema",
                              calls=[shell.call("vela_vm_validate", spec.name,
                                                base64.b64encode(target.xml.encode()).decode())]))
    if spec.image and where["disk"] not in observed.present:
        changes.append(Change(kind="volume", subject=where["disk"], detail="create",
                              calls=[shell.call("vela_vm_disk", spec.image.path,
                                                observed.image_format or "qcow2",
                                                where["disk"], f"{spec.image.size_gib}G")]))
    # A restart-class change rewrites the seed too: the guest configuration lives there.
    if defining:
        detail = "define" if current is None else "redefine" + (
            f" ({'; '.join(differs)})" if differs else "")
        detail += "".join(f"; {note}" for note in target.notes)
        changes.append(Change(kind="domain", subject=spec.name, detail=detail, calls=[
            shell.call("vela_vm_file", where["seed"], base64.b64encode(target.seed).decode()),
            shell.call("vela_vm_define", spec.name,
                       base64.b64encode(target.xml.encode()).decode(),
                       other_domains(observed, spec.name))]))
    stopped = False
    if restart and current.running:
        changes.append(Change(kind="domain", subject=spec.name, detail="restart",
                              calls=[shell.call("vela_vm_stop", spec.name,
                                                spec.shutdown_timeout)]))
        stopped = True
    starting = spec.start and (current is None or not current.running or stopped)
    if starting:
        changes.append(Change(kind="domain", subject=spec.name, detail="start",
                              calls=[shell.call("vela_virsh", "start", spec.name)]))
    if spec.start and spec.wait_for_address and (starting or not observed.addresses):
        # In the same remote command as the start: one round trip starts and waits.
        changes.append(Change(kind="guest", subject=spec.name, detail="wait for its address",
                              calls=[shell.call("vela_vm_wait_address", spec.name,
                                                spec.wait_timeout)]))
    return Plan(changes=changes)


def other_domains(observed: VmObservations, name: str) -> str:
    """The other domains placement saw, as `vela_vm_define` compares them under the host's
    lock: names in byte order (the shell's `LC_ALL=C sort`), each followed by a space."""
    names = sorted((domain.name for domain in observed.domains if domain.name != name),
                   key=str.encode)
    return "".join(f"{name} " for name in names)


def plan_removal(spec: GpuVmArgs, observed: VmObservations) -> Plan:
    """Delete: the guest stopped and undefined, the volumes vela made removed."""
    where = paths(spec)
    changes = []
    if observed.domain(spec.name) is not None:
        changes.append(Change(kind="domain", subject=spec.name, detail="stop and undefine",
                              calls=[shell.call("vela_vm_stop", spec.name,
                                                spec.shutdown_timeout),
                                     shell.call("vela_virsh", "undefine", "--nvram",
                                                spec.name)]))
    for path in (where["disk"], where["seed"], where["failed"]):
        if path in observed.present:
            changes.append(Change(kind="volume", subject=path, detail="remove",
                                  calls=[shell.call("vela_remove_file", path)]))
    return Plan(changes=changes)


def removal_finish() -> list[str]:
    """Once the guest and its volumes are gone: vela's directories, if left empty."""
    return [shell.call("vela_remove_empty_dirs", VOLUMES, FAILED, "/var/lib/vela")]


def drift(desired: str, actual: str) -> list[str]:
    """The owned fields where a defined domain differs from the wanted XML."""
    want, have = owned_fields(desired), owned_fields(actual)
    return [f"{key}: {have[key]} (wanted {want[key]})" for key in want if want[key] != have[key]]
