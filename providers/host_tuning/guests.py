"""The guests on a host HostTuning reboots: none is killed without the stack saying so.

Before a reboot: a running guest vela did not make stops it (unless `rebootWithOtherGuests`),
decided from the first observation, before anything is changed; vela's running guests (GpuVm's
mark in their metadata) are shut down gracefully within their own shutdown timeout, then
powered off. After the host is back, and even when the apply after the boot failed, they are
started again and waited for until libvirt reports them running, so a rolling change moves to
the next node only with this node's guests back.
"""

from __future__ import annotations

from ..common import progress, shell
from ..common.plan import Pending
from ..errors import HostTuningError
from ..host import Host
from .observe import Observations, RunningDomain
from .spec import HostTuningArgs

START_TIMEOUT = 300  # seconds for libvirt to report a started guest running


def reboot_refusal(host_name: str, spec: HostTuningArgs, observed: Observations,
                   pending: list[Pending]) -> str | None:
    """Why this host may not reboot now (None: it may). Pure."""
    if spec.reboot != "allowed" or spec.reboot_with_other_guests:
        return None
    others = sorted(domain.name for domain in observed.running if not domain.ours)
    if not others:
        return None
    causes = sorted({item.what for item in pending})
    return (f"{host_name}: a reboot is needed ({len(pending)} setting(s) of "
            f"{', '.join(causes) or 'the boot'}) but guest(s) vela did not make are running: "
            f"{', '.join(others)}. Stop them (or move them), or set rebootWithOtherGuests: true "
            f"to let the reboot take them down. Nothing was changed")


def before_reboot(host: Host, spec: HostTuningArgs, observed: Observations,
                  pending: list[Pending]) -> list[RunningDomain]:
    """Right before a reboot (a need found only after applying, such as huge pages the kernel
    could not allocate at run time): refuse it over another's running guest, as the first check
    would have; else stop vela's guests."""
    refusal = reboot_refusal(host.name, spec, observed, pending)
    if refusal:
        raise HostTuningError(refusal.replace("Nothing was changed", "What was applied takes "
                                              "effect at the next boot"))
    return stop_guests(host, observed)


def stop_guests(host: Host, observed: Observations) -> list[RunningDomain]:
    """Shut vela's running guests down before the reboot; returns them, to start again."""
    ours = [domain for domain in observed.running if domain.ours]
    if ours:
        progress.report("shutting guests down for the reboot",
                        ", ".join(f"{d.name} (within {d.shutdown_timeout} s)" for d in ours))
        calls = [shell.call("vela_vm_stop", domain.name, domain.shutdown_timeout)
                 for domain in ours]
        timeout = sum(domain.shutdown_timeout for domain in ours) + 120
        host.run_script(shell.script(calls), timeout=timeout)
    return ours


def start_guests(host: Host, stopped: list[RunningDomain] | None) -> None:
    """Start again the guests `stop_guests` stopped, and wait until each is running."""
    if not stopped:
        return
    progress.report("starting the guests again", ", ".join(d.name for d in stopped))
    calls = [shell.call("vela_vm_start_running", domain.name, START_TIMEOUT)
             for domain in stopped]
    try:
        host.run_script(shell.script(calls), timeout=START_TIMEOUT * len(stopped) + 60)
    except Exception as exc:  # noqa: BLE001 - said with what to do, whatever the cause
        names = ", ".join(domain.name for domain in stopped)
        raise HostTuningError(f"{host.name}: after the reboot, starting the guest(s) vela shut "
                              f"down failed ({names}): {exc}. Start them with virsh start, or "
                              f"run the update again") from None
