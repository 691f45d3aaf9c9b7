"""The converge loop all three resources share, and GpuVm's planner, on their own.

The loop drives a small world: a host root whose files stand for settings, changed by the
product's shell library through a real `LocalHost`. A setting configured "for the next boot"
becomes active when the host reboots; the reboot is requested and waited for by the product's
own `reboot_and_wait` (`systemctl reboot`, then a new boot id), which `BootingHost` turns into
a reboot of the world instead of the machine running the tests.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from providers.common import shell
from providers.common.converge import Converger, Outcome
from providers.common.plan import Change, Pending, Plan, Round, Snapshot, file_changes
from providers.errors import HostTuningError
from providers.gpu_vm.observe import Domain, VmObservations
from providers.gpu_vm.plan import plan as vm_plan
from providers.gpu_vm.plan import plan_removal
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.target import DomainTarget
from providers.host import LocalHost
from providers.host.base import CommandResult

BOOT_ID = "proc/sys/kernel/random/boot_id"
SETTINGS = "/etc/world/settings"
COUNT = "/etc/world/count"
NEXT_BOOT = "/etc/world/next-boot"
ACTIVE = "run/world/active"  # what the running system uses: set at boot from NEXT_BOOT


class BootingHost(LocalHost):
    """The world's host. `systemctl reboot` (systemctl(1): "Shut down and reboot the system")
    boots the world: a new boot id, and what was configured for the next boot is active."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.root = root
        self.boots = 0
        self.scripts: list[str] = []
        (root / BOOT_ID).parent.mkdir(parents=True)
        (root / BOOT_ID).write_text("boot-0\n")
        (root / ACTIVE).parent.mkdir(parents=True)

    def _execute(self, command: str, stdin: bytes | None, deadline: float) -> CommandResult:
        if "systemctl reboot" in command:
            self.boots += 1
            (self.root / BOOT_ID).write_text(f"boot-{self.boots}\n")
            configured = self.root / NEXT_BOOT.lstrip("/")
            if configured.exists():
                (self.root / ACTIVE).write_text(configured.read_text())
            return CommandResult(command, 0, b"", b"")
        if stdin and b"vela_fail()" in stdin:
            self.scripts.append(stdin.decode())
        return super()._execute(command, stdin, deadline)

    def files(self) -> dict[str, str | None]:
        found = {}
        for path in (SETTINGS, COUNT, NEXT_BOOT, "/" + ACTIVE):
            file = self.root / path.lstrip("/")
            found[path] = file.read_text() if file.exists() else None
        return found


def _world(tmp_path: Path, plan_for, *, reboots="never") -> tuple[BootingHost, Converger]:
    host = BootingHost(tmp_path)
    converger = Converger(host=host, look=lambda: Snapshot(None, host.files()),
                          plan_for=plan_for, error=HostTuningError, apply_timeout=60,
                          reboots=reboots, reboot_timeout=5)
    return host, converger


def _settings_after_count(now: Snapshot, at: Round) -> Plan:
    """As SriovPool plans: the count first, alone; the settings of what it made next round."""
    if now.observed[COUNT] != "4":
        return Plan(changes=[Change(kind="count", subject="pool", detail="-> 4",
                                    calls=[shell.write_file(COUNT, "4")])])
    return Plan(changes=file_changes({SETTINGS: "fast"}, now.observed))


def _next_boot(now: Snapshot, at: Round) -> Plan:
    """As HostTuning plans the kernel command line: configured now, active after a boot."""
    result = Plan(changes=[change.model_copy(update={"effect": "next-boot"})
                           for change in file_changes({NEXT_BOOT: "on"}, now.observed)])
    if now.observed["/" + ACTIVE] != "on":
        result.pending.append(Pending(cause="kernel-args", detail="on at the next boot"))
    result.reboots_required = 1 if result.changes or result.pending else 0
    return result


def _start(host: BootingHost, converger: Converger, **options) -> Outcome:
    return converger.converge(converger.look(), **options)


def test_a_count_change_takes_two_rounds_then_nothing_is_left(tmp_path):
    host, converger = _world(tmp_path, _settings_after_count)
    done = _start(host, converger)
    assert done.changes == ["count pool: -> 4", f"file {SETTINGS}: create"]
    assert len(host.scripts) == 2 and host.boots == 0
    assert done.plan.changes == [] and host.files()[SETTINGS] == "fast"
    again = _start(host, converger)
    assert again.changes == [] and len(host.scripts) == 2  # idempotent: nothing run


def test_a_change_that_does_not_take_is_retried_once_then_named(tmp_path):
    def stuck(now, at):
        return Plan(changes=[Change(kind="setting", subject="x", detail="0 -> 1",
                                    calls=[shell.call("true")])])

    host, converger = _world(tmp_path, stuck)
    with pytest.raises(HostTuningError) as caught:
        _start(host, converger)
    assert str(caught.value) == (f"{host.name}: these settings did not take:\n"
                                 f" - setting x: 0 -> 1")
    assert len(host.scripts) == 2  # the first try and one retry


def test_first_runs_before_the_plan_and_finish_only_once_the_target_is_reached(tmp_path):
    host, converger = _world(tmp_path, _settings_after_count)
    _start(host, converger, first=[shell.write_file("/etc/world/saved", "originals")],
           finish=[shell.call("vela_remove_file", "/etc/world/saved")])
    assert host.scripts[0].index("vela_write_file /etc/world/saved") < \
        host.scripts[0].index(f"vela_write_file {COUNT}")
    assert len(host.scripts) == 3 and "vela_remove_file /etc/world/saved" in host.scripts[2]
    assert not (tmp_path / "etc/world/saved").exists()

    def impossible(now, at):
        return Plan(changes=[Change(kind="setting", subject="x", detail="never",
                                    calls=[shell.call("true")])])

    host, converger = _world(tmp_path / "again", impossible)
    with pytest.raises(HostTuningError):
        _start(host, converger, finish=[shell.call("vela_remove_file", "/etc/world/saved")])
    assert not any("vela_remove_file" in script.splitlines()[-1] for script in host.scripts)


def test_a_reboot_only_when_allowed(tmp_path):
    host, converger = _world(tmp_path / "never", _next_boot)
    done = _start(host, converger)
    assert host.boots == 0 and done.reboots == 0
    assert done.plan.reasons() == ["kernel command line: on at the next boot"]  # reported

    host, converger = _world(tmp_path / "allowed", _next_boot, reboots="allowed")
    done = _start(host, converger)
    assert host.boots == 1 and done.reboots == 1 and done.plan.pending == []
    assert done.changes == [f"file {NEXT_BOOT}: create (next-boot)"]


def test_a_reboot_that_changed_nothing_is_not_repeated(tmp_path):
    def never_active(now, at):
        return Plan(pending=[Pending(cause="firmware", subject="nic", detail="stays 0")],
                    reboots_required=1)

    host, converger = _world(tmp_path, never_active, reboots="allowed")
    with pytest.raises(HostTuningError, match="still pending after 1 reboot\\(s\\): firmware "
                                              "nic: stays 0"):
        _start(host, converger)
    assert host.boots == 1


# -- GpuVm's planner -----------------------------------------------------------------------------

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
XML = "<domain><name>vm</name><memory>1048576</memory><vcpu>2</vcpu></domain>"
TARGET = DomainTarget(layout=None, xml=XML, seed=b"seed", topology="<system/>")


def _vm(**values) -> GpuVmArgs:
    return GpuVmArgs.model_validate({
        "address": "10.0.0.1", "hostKey": HOST_KEY, "name": "vm", "vcpus": 2, "memoryGib": 1,
        "kernelBoot": {"kernel": "/k", "initrd": "/i"}, **values})


def _running(xml: str = XML, addresses=("192.0.2.10",)) -> VmObservations:
    return VmObservations(domains=[Domain("u", xml, "running")], addresses=list(addresses))


def _kinds(plan: Plan) -> list[str]:
    return [change.detail for change in plan.changes]


def test_a_new_guest_is_defined_started_and_waited_for():
    first = vm_plan(_vm(), TARGET, VmObservations(), Round(booted=False, number=0))
    assert _kinds(first) == ["define", "start", "wait for its address"]
    assert "vela_vm_wait_address vm 600" in first.calls[-1]


def test_a_guest_not_waited_for_is_started_and_then_left_alone():
    """waitForAddress: false: started in the same apply, never waited for, and a running guest
    with no lease yet is no change (else every `pulumi up` would wait for it)."""
    spec = _vm(waitForAddress=False)
    first = vm_plan(spec, TARGET, VmObservations(), Round(booted=False, number=0))
    assert _kinds(first) == ["define", "start"]
    assert vm_plan(spec, TARGET, _running(addresses=()), Round(False, 1)).changes == []
    assert _kinds(vm_plan(_vm(), TARGET, _running(addresses=()), Round(False, 1))) == \
        ["wait for its address"]


def test_a_host_with_virt_xml_validate_checks_the_xml_before_anything_is_written():
    """vela_vm_validate comes first, before the volume and the define, on a host that has
    virt-xml-validate and xmllint; nothing is validated once the definition is as wanted."""
    spec = _vm(kernelBoot=None, image={"path": "/img/base.qcow2"})
    first = vm_plan(spec, TARGET, VmObservations(validator=True), Round(booted=False, number=0))
    assert _kinds(first) == ["validate against the host's libvirt schema", "create", "define",
                             "start", "wait for its address"]
    assert first.calls[0] == shell.call("vela_vm_validate", "vm",
                                        base64.b64encode(XML.encode()).decode())
    assert first.calls[0] in shell.script(first.calls)
    defined = _running()
    defined.validator = True
    defined.present = {"/var/lib/libvirt/images/vela/vm.qcow2"}
    assert vm_plan(spec, TARGET, defined, Round(booted=False, number=0)).changes == []
    changed = _running(XML.replace("<vcpu>2</vcpu>", "<vcpu>4</vcpu>"))
    changed.validator = True
    assert _kinds(vm_plan(_vm(), TARGET, changed, Round(False, 0)))[0] == \
        "validate against the host's libvirt schema"


def test_a_restart_happens_in_the_first_round_only_and_waits_for_the_new_boot():
    spec = _vm()
    first = vm_plan(spec, TARGET, _running(), Round(booted=False, number=0), restart=True)
    # The guest still shows its old lease: the wait is for the restarted guest all the same.
    assert _kinds(first) == ["redefine", "restart", "start", "wait for its address"]
    later = vm_plan(spec, TARGET, _running(), Round(booted=False, number=1), restart=True)
    assert later.changes == []


def test_a_definition_libvirt_changed_is_planned_again_with_the_fields():
    changed = XML.replace("<vcpu>2</vcpu>", "<vcpu>4</vcpu>")
    redefine, = vm_plan(_vm(), TARGET, _running(changed), Round(False, 0)).changes
    assert redefine.detail == "redefine (vcpus: 4 (wanted 2))"


def test_removal_stops_undefines_and_removes_only_what_is_there():
    spec = _vm()
    disk = "/var/lib/libvirt/images/vela/vm.qcow2"
    present = VmObservations(domains=[Domain("u", XML, "running")], present={disk})
    removal = plan_removal(spec, present)
    assert _kinds(removal) == ["stop and undefine", "remove"]
    assert removal.calls[:2] == ["vela_vm_stop vm 120", "vela_virsh undefine --nvram vm"]
    assert plan_removal(spec, VmObservations()).changes == []


def test_preflight_runs_again_after_each_reboot(tmp_path):
    """What a boot brings can fail a check no earlier run could make (an IOMMU asked for that
    the BIOS keeps off): the loop stops there and says so, changing nothing more."""
    host, converger = _world(tmp_path, _next_boot, reboots="allowed")
    seen = []

    def check(now: Snapshot) -> list[str]:
        seen.append(now.observed["/" + ACTIVE])
        return ["the feature came up broken: fix it in the BIOS"] if seen[-1] else []

    converger.check = check
    with pytest.raises(HostTuningError, match=r"after reboot 1, preflight found 1 problem\(s\); "
                                              r"nothing more was changed:\n - the feature came"):
        converger.converge(converger.look())
    assert seen == ["on"] and host.boots == 1


# -- progress and errors as the user reads them ---------------------------------------------------

def _lines(host: BootingHost, converger: Converger) -> tuple[list[str], Outcome | None]:
    """What `pulumi up` would show for one converge run: its progress lines."""
    from providers.common import progress

    lines: list[str] = []
    with progress.operation(host.name, "HostTuning", "create", sink=lines.append):
        done = _start(host, converger)
    return lines, done


def test_each_step_is_reported_as_it_happens_with_the_time_since_the_call_began(tmp_path):
    host, converger = _world(tmp_path, _next_boot, reboots="allowed")
    lines, _ = _lines(host, converger)
    prefix = f"{host.name}: HostTuning create: "
    assert all(line.startswith(prefix) and re.search(r" \[\d+\.\d s\]$", line) for line in lines)
    steps = [re.sub(r" \[\d+\.\d s\]$", "", line.removeprefix(prefix)) for line in lines]
    assert steps[0] == "plan: 1 change(s), waiting for a reboot: kernel command line: on at " \
                       "the next boot"
    assert steps[1] == f"applying 1 change(s), round 1: file {NEXT_BOOT}: create (next-boot)"
    assert re.fullmatch(r"round 1 applied in \d+\.\d s: now no change, waiting for a reboot: "
                        r"kernel command line: on at the next boot", steps[2])
    assert steps[3] == "rebooting (1 of at most 3): for kernel command line: on at the next " \
                       "boot; waiting up to 5 s for it to answer again"
    assert re.fullmatch(r"rebooting: SSH ready after \d+ s", steps[4])
    assert steps[5:] == ["plan after reboot 1: nothing to change",
                         "verified: 1 change(s) made, 1 reboot(s)"]


def test_a_failed_step_names_the_host_the_call_the_step_and_the_fix_in_its_first_line(tmp_path):
    """An action that fails on the host (`vela_fail`): the first line says where (host), what
    (the call and the step, with the time), what the host said, and what to do; the whole
    output follows."""
    from providers.errors import CommandFailed

    def failing(now, at):
        return Plan(changes=[Change(kind="sysctl", subject="net.core.rmem_max", detail="-> 1",
                                    calls=[shell.call("vela_fail", "cannot set sysctl x")])])

    host, converger = _world(tmp_path, failing)
    with pytest.raises(CommandFailed) as caught:
        _lines(host, converger)
    first, _, rest = str(caught.value).partition("\n")
    assert re.fullmatch(
        rf"{re.escape(host.name)}: HostTuning create failed while applying 1 change\(s\), "
        r"round 1 \(\d+\.\d s in\): command `sh -s --` exited with status 1: cannot set sysctl "
        r"x; fix what the host reports, then run `pulumi up` again: it reads the host first "
        r"and applies only what is still missing", first), first
    assert rest == "vela: cannot set sysctl x"


def test_outside_a_provider_call_nothing_is_reported_and_errors_read_as_before(tmp_path):
    from providers.common import progress

    progress.report("plan", "nothing")  # no operation: no sink, nothing happens
    host, converger = _world(tmp_path, lambda now, at: Plan(changes=[Change(
        kind="setting", subject="x", detail="0 -> 1", calls=[shell.call("true")])]))
    with pytest.raises(HostTuningError) as caught:
        _start(host, converger)
    assert str(caught.value).startswith(f"{host.name}: these settings did not take:\n")
