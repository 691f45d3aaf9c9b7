"""HostTuning never reboots a host under a running guest without the stack saying so.

Through the provider's own converge (`converge_desired`) on the HGX fixture, the fake kernel
doing the reboots. The fixture's root has no libvirt, so the running guests a host would report
are added to what HostTuning observes; shutting vela's guests down and starting them again are
recorded (the real ones run on a lab host: tests/lab/test_tuning_pools_and_guests_lab.py).
"""

from __future__ import annotations

import base64

import pytest

from providers.errors import HostTuningError
from providers.gpu_vm.xml.domain import domain, render
from providers.gpu_vm.xml.spec import DomainSpec
from providers.host_tuning import guests, provider
from providers.host_tuning.observe import RunningDomain, parse_observations
from tests.unit.test_host_tuning_plan import Rig


class Guests:
    """The host's running guests as HostTuning would observe them: vela's stay down from the
    moment they are shut down until they are started; anyone else's until a reboot."""

    def __init__(self, monkeypatch, rig: Rig, ours: list[RunningDomain],
                 others: list[RunningDomain]) -> None:
        self.rig, self.ours, self.others, self.up = rig, ours, others, True
        self.events: list[tuple[str, int, list]] = []
        real = provider.observe

        def observe(host, spec):
            now = real(host, spec)
            now.observed.running = (self.ours if self.up else []) + \
                (self.others if rig.kernel.boots == 0 else [])
            return now

        monkeypatch.setattr(provider, "observe", observe)
        monkeypatch.setattr(guests, "stop_guests", self.stop)
        monkeypatch.setattr(guests, "start_guests", self.start)

    def stop(self, host, observed):
        self.events.append(("stop", self.rig.kernel.boots, list(observed.running)))
        self.up = False
        return [domain for domain in observed.running if domain.ours]

    def start(self, host, stopped):
        self.events.append(("start", self.rig.kernel.boots, stopped))
        self.up = True


def test_a_running_guest_vela_did_not_make_stops_the_reboot_before_anything_changes(
        tmp_path, monkeypatch):
    rig = Rig(tmp_path)
    watched = Guests(monkeypatch, rig, [RunningDomain("lab-vm0", ours=True)],
                     [RunningDomain("tenant-db", ours=False)])
    before = rig.snapshot()
    with pytest.raises(HostTuningError, match=(
            r": a reboot is needed \(\d+ setting\(s\) of firmware, kernel command line\) but "
            r"guest\(s\) vela did not make are running: tenant-db\. Stop them \(or move them\), "
            r"or set rebootWithOtherGuests: true .*Nothing was changed$")):
        rig.converge()
    assert rig.snapshot() == before and rig.kernel.boots == 0 and watched.events == []


def test_the_stack_may_let_the_reboot_take_other_guests_down(tmp_path, monkeypatch):
    rig = Rig(tmp_path)
    Guests(monkeypatch, rig, [], [RunningDomain("tenant-db", ours=False)])
    outputs = rig.converge(reboot_with_other_guests=True)
    assert outputs["reboots"] == rig.kernel.boots > 0


def test_vela_guests_are_shut_down_before_each_reboot_and_started_after_it(
        tmp_path, monkeypatch):
    """The HGX node's firmware takes two boots (ADVANCED_PCI_SETTINGS, then MAX_ACC_OUT_READ):
    the guest is shut down before each and started after each."""
    rig = Rig(tmp_path)
    ours = [RunningDomain("node-0-vm0", ours=True, shutdown_timeout=30)]
    watched = Guests(monkeypatch, rig, ours, [])
    outputs = rig.converge()
    assert outputs["reboots"] == rig.kernel.boots == 2
    assert watched.events == [("stop", 0, ours), ("start", 1, ours),
                              ("stop", 1, ours), ("start", 2, ours)]


def test_guests_come_back_even_when_the_apply_after_the_boot_fails(tmp_path, monkeypatch):
    rig = Rig(tmp_path)
    ours = [RunningDomain("node-0-vm0", ours=True)]
    watched = Guests(monkeypatch, rig, ours, [])

    def broken(*_args, **_kwargs):
        raise HostTuningError("10.0.0.1: preflight after the boot failed")

    monkeypatch.setattr(provider.Converger, "_check_after_boot", broken)
    with pytest.raises(HostTuningError, match="after the boot failed"):
        rig.converge()
    assert watched.events == [("stop", 0, ours), ("start", 1, ours)]


def test_running_guests_are_read_with_whose_they_are():
    """What the observation section emits for two running guests: one GpuVm made (its metadata
    mark carries its shutdown timeout) and one it did not."""
    made = render(domain(DomainSpec(name="node-0-vm0", domain_type="qemu", cpu_model="qemu64",
                                    phys_bits_mode="none", hugepage_kib=None, firmware="bios",
                                    shutdown_timeout=45), _tiny_layout()))
    other = "<domain type='kvm'><name>tenant-db</name><memory>1024</memory></domain>"
    text = "".join(f"running\t{uuid}\txml\t{base64.b64encode(xml.encode()).decode()}\n"
                   for uuid, xml in (("u1", made), ("u2", other)))
    observed = parse_observations(text)
    assert observed.running == [RunningDomain("node-0-vm0", ours=True, shutdown_timeout=45),
                                RunningDomain("tenant-db", ours=False)]


def _tiny_layout():
    from providers.gpu_vm.placement import GuestCell, Layout

    return Layout(cells=[GuestCell(id=0, host_node=0, vcpus=[0], host_cpus=[0],
                                   memory_kib=1048576)],
                  emulator_cpus=[], complexes=[], devices=[], memory_kib=1048576, phys_bits=40)
