"""From a target state and what a host has now to an ordered list of changes. Pure.

Each change says how it takes effect: `runtime` (at once), `reboot` (the kernel command line:
configured now, active after a reboot) or `firmware` (NIC firmware: set now for the next boot).
`pending` lists what is configured but waits for a reboot; `reboots_required` counts the reboots
still needed to finish, including the second one when a firmware parameter can only be set once
another is active (MAX_ACC_OUT_READ after ADVANCED_PCI_SETTINGS). The same function plans apply
(target = desired) and delete (target = the originals).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..common import shell
from ..common.registers import current_register
from ..facts.cmdline import param_key, parse_cmdline
from ..facts.models import HostFacts
from . import grub
from .firmware import REQUIRES_ACTIVE, set_command
from .observe import BOOT_SCRIPT, GRUB_DEFAULTS, UNIT_NAME, Observations
from .target import GRUBBY, Target

Phase = Literal["runtime", "reboot", "firmware"]


class Change(BaseModel):
    kind: str
    subject: str
    detail: str
    phase: Phase
    calls: list[str] = Field(default_factory=list, exclude=True)

    def summary(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail} ({self.phase})"


class Plan(BaseModel):
    changes: list[Change] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)  # configured, active after a reboot
    reboots_required: int = 0

    @property
    def empty(self) -> bool:
        return not self.changes and not self.pending

    def script(self) -> str:
        return shell.script([call for change in self.changes for call in change.calls])


def plan(target: Target, facts: HostFacts, observed: Observations) -> Plan:
    result = Plan()
    _files(target, observed, result)
    _unit(target, observed, result)
    _sysctls(target, observed, result)
    _drivers(target, facts, result)
    _modules(target, observed, result)
    _registers(target, facts, result)
    _hugepages(target, facts, result)
    _kernel_args(target, facts, observed, result)
    deferred = _firmware(target, observed, result)
    needs_reboot = bool(result.pending) or any(change.phase != "runtime"
                                               for change in result.changes)
    result.reboots_required = 2 if deferred else (1 if needs_reboot else 0)
    return result


def _files(target: Target, observed: Observations, result: Plan) -> None:
    for path, content in target.files.items():
        current = observed.files.get(path)
        if content == current:
            continue
        if content is None:
            result.changes.append(Change(kind="file", subject=path, detail="remove",
                                         phase="runtime",
                                         calls=[shell.call("vela_remove_file", path)]))
        else:
            mode = 0o755 if path == BOOT_SCRIPT else 0o644
            result.changes.append(Change(kind="file", subject=path,
                                         detail="create" if current is None else "update",
                                         phase="runtime",
                                         calls=[shell.write_file(path, content, mode)]))


def _unit(target: Target, observed: Observations, result: Plan) -> None:
    if target.unit_enabled is None or target.unit_enabled == observed.unit_enabled:
        return
    verb = "enable" if target.unit_enabled else "disable"
    result.changes.append(Change(kind="unit", subject=UNIT_NAME, detail=verb, phase="runtime",
                                 calls=[shell.call("vela_unit", verb, UNIT_NAME)]))


def _sysctls(target: Target, observed: Observations, result: Plan) -> None:
    for name, value in sorted(target.sysctls.items()):
        current = observed.sysctls.get(name)
        if current is not None and " ".join(value.split()) == current:
            continue
        result.changes.append(Change(kind="sysctl", subject=name,
                                     detail=f"{current!r} -> {value!r}", phase="runtime",
                                     calls=[shell.call("vela_sysctl", name, value)]))


def _drivers(target: Target, facts: HostFacts, result: Plan) -> None:
    for address, override in sorted(target.drivers.items()):
        device = facts.pci.get(address)
        if device is None:
            continue  # gone; preflight reports selected devices that are missing
        if override:
            if device.driver == override and device.driver_override == override:
                continue
            detail = f"{device.driver or 'no driver'} -> {override}"
        else:
            if device.driver_override is None and device.driver != "vfio-pci":
                continue
            detail = f"{device.driver or 'no driver'} -> default driver"
        result.changes.append(Change(kind="driver", subject=address, detail=detail,
                                     phase="runtime",
                                     calls=[shell.call("vela_bind", address, override or "")]))


def _modules(target: Target, observed: Observations, result: Plan) -> None:
    for name, loaded in sorted(target.modules.items()):
        if loaded == (name in observed.modules):
            continue
        verb = "load" if loaded else "unload"
        result.changes.append(Change(kind="module", subject=name, detail=verb, phase="runtime",
                                     calls=[shell.call("vela_module", verb, name)]))


def _registers(target: Target, facts: HostFacts, result: Plan) -> None:
    for _, register in sorted(target.registers.items()):
        current = current_register(facts, register.address, register.offset)
        if current is None or current & register.mask == register.value & register.mask:
            continue
        new = (current & ~register.mask) | (register.value & register.mask)
        result.changes.append(Change(
            kind="register", subject=register.address,
            detail=f"{register.what} {current:#06x} -> {new:#06x}", phase="runtime",
            calls=[shell.call("vela_cfg_write", register.address, register.offset,
                              register.value, register.mask)]))


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
            detail=f"{current} -> {count} pages of {target.hugepages_kib} KiB", phase="runtime",
            calls=[shell.call("vela_hugepages", node_id, target.hugepages_kib, count)]))


def _kernel_args(target: Target, facts: HostFacts, observed: Observations,
                 result: Plan) -> None:
    if not target.kernel_args:
        return
    if GRUBBY in target.grub:
        add, remove = grub.grubby_arguments(observed.grubby_args or "", target.grub[GRUBBY])
        if add or remove:
            result.changes.append(Change(
                kind="kernel-args", subject="grubby", detail=_args_detail(add, remove),
                phase="reboot",
                calls=[shell.call("vela_grubby", " ".join(add), " ".join(remove))]))
    else:
        current = observed.files.get(GRUB_DEFAULTS) or ""
        edited = grub.edit(current, target.grub)
        if edited != current:
            before, after = grub.configured(current), grub.configured(edited)
            add = [token for key, token in after.items() if before.get(key) != token]
            remove = [token for key, token in before.items() if key not in after]
            tool = observed.bootloader or "update-grub"
            result.changes.append(Change(
                kind="kernel-args", subject=GRUB_DEFAULTS, detail=_args_detail(add, remove),
                phase="reboot",
                calls=[shell.write_file(GRUB_DEFAULTS, edited), shell.call("vela_bootloader",
                                                                           tool)]))
    active = {param_key(token): token for token in parse_cmdline(facts.cmdline)}
    for key, token in target.kernel_args.items():
        if token and active.get(key) != token:
            result.pending.append(f"kernel command line: {token} takes effect at the next boot")
        elif token is None and key in active:
            result.pending.append(f"kernel command line: {active[key]} stays active until "
                                  f"the next boot")


def _args_detail(add: list[str], remove: list[str]) -> str:
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
                    result.pending.append(f"firmware {device}: {name}={value} can be set only "
                                          f"once {gate[0]}={gate[1]} is active (a reboot)")
                continue  # unsupported parameters are a preflight error
            if param.next_boot != value:
                to_set[name] = value
            if param.current != value:
                result.pending.append(f"firmware {device}: {name} is {param.current} until "
                                      f"a reboot makes {value} current")
        if to_set:
            argv = set_command(firmware_tool(target, observed), device, to_set)
            result.changes.append(Change(
                kind="firmware", subject=device,
                detail=" ".join(f"{name}={value}" for name, value in to_set.items()),
                phase="firmware", calls=[shell.call("vela_firmware", argv[0], device,
                                                    *argv[5:])]))
    return deferred


def firmware_tool(target: Target, observed: Observations) -> str:
    """The tool to run: the configured path, else mlxconfig or mstconfig as found."""
    if target.firmware_tool and target.firmware_tool != "auto":
        return target.firmware_tool
    return observed.tools.get("mlxconfig") or observed.tools.get("mstconfig") or "mlxconfig"
