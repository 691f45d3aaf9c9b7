"""From a target state and what a host has now to an ordered list of changes. Pure.

Each change says how it takes effect: `runtime` (at once), `next-boot` (the kernel command
line: configured now, active after a reboot) or `firmware` (NIC firmware: set now for the next
boot).
`pending` lists what is configured but waits for a reboot; `reboots_required` counts the reboots
still needed to finish, including the second one when a firmware parameter can only be set once
another is active (MAX_ACC_OUT_READ after ADVANCED_PCI_SETTINGS). The same function plans apply
(target = desired) and delete (target = the originals).
"""

from __future__ import annotations

from ..common import shell
from ..common.plan import (
    Change,
    Pending,
    Plan,
    Round,
    Snapshot,
    driver_change,
    file_changes,
    register_changes,
    unit_changes,
)
from ..facts.cmdline import parse_cmdline
from ..facts.models import HostFacts, iommu_live
from . import grub
from .firmware import REQUIRES_ACTIVE, set_arguments
from .observe import BOOT_SCRIPT, GRUB_DEFAULTS, UNIT_NAME, Observations
from .target import GRUBBY, Target


def plan(target: Target, facts: HostFacts, observed: Observations) -> Plan:
    result = Plan()
    result.changes += file_changes(target.files, observed.files, [BOOT_SCRIPT])
    result.changes += unit_changes(UNIT_NAME, target.unit_enabled, observed.unit_enabled)
    _sysctls(target, observed, result)
    _drivers(target, facts, result)
    _modules(target, observed, result)
    result.changes += register_changes(target.registers, facts)
    _hugepages(target, facts, result)
    _kernel_args(target, facts, observed, result)
    deferred = _firmware(target, observed, result)
    needs_reboot = bool(result.pending) or any(change.effect != "runtime"
                                               for change in result.changes)
    result.reboots_required = 2 if deferred else (1 if needs_reboot else 0)
    return result


def _sysctls(target: Target, observed: Observations, result: Plan) -> None:
    for name, value in sorted(target.sysctls.items()):
        current = observed.sysctls.get(name)
        if current is not None and " ".join(value.split()) == current:
            continue
        result.changes.append(Change(kind="sysctl", subject=name,
                                     detail=f"{current!r} -> {value!r}",
                                     calls=[shell.call("vela_sysctl", name, value)]))


def _drivers(target: Target, facts: HostFacts, result: Plan) -> None:
    live = iommu_live(facts)
    for address, override in sorted(target.drivers.items()):
        device = facts.pci.get(address)
        if device is None:
            continue  # gone; preflight reports selected devices that are missing
        change = driver_change(device, override)
        if change and override == "vfio-pci" and not live:
            # vfio-pci refuses a device without an IOMMU group (drivers/vfio/group.c
            # vfio_group_find_or_alloc): the binding waits for the boot with the IOMMU on.
            result.pending.append(Pending(cause="iommu", subject=address,
                                          detail="binds once the IOMMU is on (the next boot)"))
        elif change and address in target.by_address:
            ids = device.vendor_device
            result.changes.append(change.model_copy(update={
                "detail": f"{change.detail} (by address, also at boot: vfio-pci.ids would take "
                          f"every {ids})"}))
        elif change:
            result.changes.append(change)


def _modules(target: Target, observed: Observations, result: Plan) -> None:
    for name, loaded in sorted(target.modules.items()):
        if loaded == (name in observed.modules):
            continue
        verb = "load" if loaded else "unload"
        result.changes.append(Change(kind="module", subject=name, detail=verb,
                                     calls=[shell.call("vela_module", verb, name)]))


def _hugepages(target: Target, facts: HostFacts, result: Plan) -> None:
    if target.hugepages_kib is None:
        return
    for node_id, count in sorted(target.hugepages.items()):
        node = facts.node(node_id)
        pool = node.pool(target.hugepages_kib) if node else None
        current = pool.total if pool else 0
        if current == count:
            continue
        result.changes.append(Change(
            kind="hugepages", subject=f"node{node_id}",
            detail=f"{current} -> {count} pages of {target.hugepages_kib} KiB",
            calls=[shell.call("vela_hugepages", node_id, target.hugepages_kib, count)]))


def _kernel_args(target: Target, facts: HostFacts, observed: Observations,
                 result: Plan) -> None:
    if not target.kernel_args:
        return
    if GRUBBY in target.grub:
        current = observed.grubby_args or ""
        add, remove = grub.grubby_arguments(current, target.grub[GRUBBY])
        if add or remove:
            # grubby sets an argument by name, replacing one of that name already there: what
            # goes is removed first, in a call of its own (grubby's C program adds first).
            calls = [shell.call("vela_grubby", "", " ".join(remove))] if remove else []
            calls += [shell.call("vela_grubby", " ".join(add), "")] if add else []
            before = grub.configured_line(current)
            after = grub.configured_line(grub.edit_line(current, target.grub[GRUBBY]))
            result.changes.append(Change(
                kind="kernel-args", subject="grubby", detail=_args_detail(before, after),
                effect="next-boot", calls=calls))
    else:
        current = observed.files.get(GRUB_DEFAULTS) or ""
        edited = grub.edit(current, target.grub)
        if edited != current:
            tool = observed.bootloader or "update-grub"
            result.changes.append(Change(
                kind="kernel-args", subject=GRUB_DEFAULTS,
                detail=_args_detail(grub.configured(current), grub.configured(edited)),
                effect="next-boot",
                calls=[shell.write_file(GRUB_DEFAULTS, edited), shell.call("vela_bootloader",
                                                                           tool)]))
    tokens = parse_cmdline(facts.cmdline)
    active = dict(zip(grub.arg_keys(tokens, target.kernel_args), tokens, strict=True))
    for key, token in target.kernel_args.items():
        if token and active.get(key) != token:
            result.pending.append(Pending(cause="kernel-args",
                                          detail=f"{token} takes effect at the next boot"))
        elif token is None and key in active:
            result.pending.append(Pending(cause="kernel-args", detail=f"{active[key]} stays "
                                          f"active until the next boot"))


def _args_detail(before: dict[str, str], after: dict[str, str]) -> str:
    add = [token for key, token in after.items() if before.get(key) != token]
    remove = [token for key, token in before.items() if key not in after]
    parts = [f"+{token}" for token in add] + [f"-{token}" for token in remove]
    return " ".join(parts) or "reorder"


def _firmware(target: Target, observed: Observations, result: Plan) -> list[str]:
    """Firmware changes for the next boot; returns parameters that must wait for a reboot."""
    deferred: list[str] = []
    for device, wanted in sorted(target.firmware.items()):
        query = observed.firmware.get(device)
        params = query.device.params if query and query.device else {}
        to_set: dict[str, int] = {}
        for name, value in wanted.items():
            if value is None:
                continue  # not visible before vela changed anything: not ours to restore
            param = params.get(name)
            if param is None:
                gate = REQUIRES_ACTIVE.get(name)
                gate_param = params.get(gate[0]) if gate else None
                if gate and not (gate_param and gate_param.current == gate[1]):
                    deferred.append(f"{device} {name}")
                    result.pending.append(Pending(
                        cause="firmware", subject=device,
                        detail=f"{name}={value} can be set only once {gate[0]}={gate[1]} is "
                               f"active (a reboot)"))
                continue  # unsupported parameters are a preflight error
            if param.next_boot != value:
                to_set[name] = value
            if param.current != value:
                result.pending.append(Pending(
                    cause="firmware", subject=device,
                    detail=f"{name} is {param.current} until a reboot makes {value} current"))
        if to_set:
            result.changes.append(Change(
                kind="firmware", subject=device,
                detail=" ".join(f"{name}={value}" for name, value in to_set.items()),
                effect="firmware",
                calls=[shell.call("vela_firmware", firmware_tool(target, observed), device,
                                  *set_arguments(to_set))]))
    return deferred


def firmware_tool(target: Target, observed: Observations) -> str:
    """The tool to run: the configured path, else mlxconfig or mstconfig as found."""
    if target.firmware_tool and target.firmware_tool != "auto":
        return target.firmware_tool
    return observed.tools.get("mlxconfig") or observed.tools.get("mstconfig") or "mlxconfig"


def plan_round(target: Target, snapshot: Snapshot[Observations], at: Round) -> Plan:
    """The plan at one point of a converge run. Huge pages are first written at run time; a
    pool still short after that means memory too fragmented to allocate them now, and they
    wait for the boot whose command line reserves them, once."""
    current = plan(target, snapshot.facts, snapshot.observed)
    short = [change for change in current.changes if change.kind == "hugepages"]
    args_pending = any(item.cause == "kernel-args" for item in current.pending)
    if not short or at.number == 0 or (at.booted and not args_pending):
        # Not written yet this boot: try at run time. Short after a boot with that command
        # line active: the node has no room; left as a change, so verify fails with the hint.
        return current
    waiting = [Pending(cause="hugepages", subject=change.subject,
                       detail=f"{change.detail} could not be allocated at run time; the kernel "
                              f"command line reserves them at the next boot")
               for change in short]
    return current.model_copy(update={
        "changes": [change for change in current.changes if change.kind != "hugepages"],
        "pending": current.pending + waiting,
        "reboots_required": max(current.reboots_required, 1)})
