"""Waiting for a host to come back in a new boot (providers/host/reboot.py), the one wait that
HostTuning's reboots and the lab's boots share, and the lab's additions to it.

The product's wait runs against scripted hosts whose boot id changes, or whose polls fail for a
while the way SSH polls of a rebooting host fail; nothing sleeps (poll=0) and no test measures
time: a deadline of 0 means "exactly one poll". The lab's console checks run with no QEMU (the
host's "QEMU" is this test process, and nothing listens on its SSH port). One test uses the
loopback sshd to show that dropping one host's connection leaves another's alone.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading

import pytest

from lab import hosts as hosts_module
from lab.hosts import Lab, LabError, LabHost, LabStalled
from lab.machine import HostSpec
from providers.errors import CommandTimeout, ConnectionLost, HostError, HostUnreachable
from providers.host import CommandResult, Host, KeyFile, SshHost
from providers.host import ssh as ssh_module
from providers.host.reboot import BootTimeout, reboot_and_wait, wait_for_new_boot

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINuJyyVDZDVuPJsPmNDxLfV9SUYoKkPubgVzTCZwM2QM"
PANIC = ("[    0.036000] Kernel panic - not syncing: timer doesn't work through "
         "Interrupt-remapped IO-APIC\n")

# How SSH polls of a rebooting host fail, as providers/host/ssh.py reports each case:
# sshd already stopped, or not yet started: the TCP connect is refused (_Connection._connect);
REFUSED = HostUnreachable("node-7", "cannot reach 10.0.0.7:22: Connection refused. Check ...")
# the connection went down while the poll's `cat` ran (SshHost._execute);
DROPPED = ConnectionLost("node-7", "the connection dropped while running 'cat ...'")
# the host vanished without closing TCP, so the poll waited out its deadline (SshHost._collect).
HUNG = CommandTimeout("node-7", "cat -- /proc/sys/kernel/random/boot_id", -1, "", "",
                      reason="did not return within 45 s")

# A lab host's first boot in a CI run, stalled in its initramfs: RCU's report every 21 s that the
# boot CPU's timer no longer fires (three of its 21 reports, as the console had them).
TIMER_STALL = "".join(
    f"[{t:>12.6f}] rcu: rcu_preempt kthread timer wakeup didn't happen for 5251 jiffies! g297 "
    f"f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402\n[{t:>12.6f}] rcu: \tPossible timer handling issue "
    f"on cpu=0 timer-softirq=11\n" for t in (34.883441, 55.890999, 118.921587))

OTHER_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


class ScriptedHost(Host):
    """A host whose boot-id reads answer from a script: a boot id, or an exception raised as
    the SSH layer would raise it. A reboot request is recorded and succeeds."""

    def __init__(self, answers, name: str = "node-7") -> None:
        super().__init__(name)
        self.answers = iter(answers)
        self.commands: list[str] = []
        self.polls = 0

    def _execute(self, command: str, stdin: bytes | None, deadline: float) -> CommandResult:
        self.commands.append(command)
        if "systemctl reboot" in command:
            return CommandResult(command, 0, b"", b"")
        assert "/proc/sys/kernel/random/boot_id" in command, command
        self.polls += 1
        answer = next(self.answers)
        if isinstance(answer, Exception):
            raise answer
        # The kernel prints the UUID with a newline (proc(5)); boot_id() strips it.
        return CommandResult(command, 0, f"{answer}\n".encode(), b"")


class ScriptedSshHost(ScriptedHost, SshHost):
    """The same script behind an SshHost handle, so that its pool entry is the real one."""

    def __init__(self, answers, port: int, key: str) -> None:
        SshHost.__init__(self, "127.0.0.1", port=port, client_key=KeyFile(key),
                         pinned_host_keys=[HOST_KEY], name=f"node-{port}")
        self.answers = iter(answers)
        self.commands = []
        self.polls = 0


def test_reboot_and_wait_returns_the_new_boot_once_the_host_is_back():
    # Still answering from the old boot just after the request (shutdown takes a while), then
    # each way a poll fails while the host is away, then the new boot.
    host = ScriptedHost(["boot-a", "boot-a", REFUSED, DROPPED, HUNG, REFUSED, "boot-b"])
    assert reboot_and_wait(host, 600, poll=0) == "boot-b"
    assert host.polls == 7
    assert "nohup systemctl reboot" in host.commands[1]  # after the first read, before polling
    assert host.commands[0] == host.commands[2]


def test_a_first_boot_takes_whatever_boot_it_finds():
    lines: list[str] = []
    host = ScriptedHost([REFUSED, REFUSED, "boot-a"])
    assert wait_for_new_boot(host, None, 600, poll=0, progress=lines.append) == "boot-a"
    assert len(lines) == 1 and lines[0].startswith("node-7: SSH ready after ")


def test_a_host_still_in_its_old_boot_is_not_back():
    host = ScriptedHost(itertools.repeat("boot-a"))
    with pytest.raises(BootTimeout, match="still answers from the boot it was in") as raised:
        wait_for_new_boot(host, "boot-a", 0, poll=0)
    assert raised.value.last is None and host.polls == 1
    # Callers that catch the errors they always caught still do.
    assert isinstance(raised.value, HostError) and isinstance(raised.value, TimeoutError)


def test_a_host_that_never_answers_reports_the_last_failure():
    host = ScriptedHost([REFUSED])
    with pytest.raises(BootTimeout, match="node-7: did not answer over SSH in a new boot "
                                          "within 0 s .*Connection refused") as raised:
        wait_for_new_boot(host, "boot-a", 0, poll=0)
    assert raised.value.last is REFUSED


def test_check_ends_the_wait_before_the_next_poll():
    host = ScriptedHost(itertools.repeat(REFUSED))
    calls = itertools.count(1)

    def check() -> None:
        if next(calls) == 3:
            raise RuntimeError("QEMU exited")

    with pytest.raises(RuntimeError, match="QEMU exited"):
        wait_for_new_boot(host, "boot-a", 600, poll=0, check=check)
    assert host.polls == 2


def test_a_failed_poll_drops_that_hosts_connection_and_no_other(monkeypatch, tmp_path):
    key = Lab(tmp_path)._client_key()
    closed: list[object] = []
    monkeypatch.setattr(ssh_module._Connection, "close", lambda self: closed.append(self))
    rebooting = ScriptedSshHost([REFUSED, HUNG, "boot-b"], port=40001, key=key)
    other = ScriptedSshHost([], port=40002, key=key)
    pooled = rebooting.connection, other.connection  # both hosts have a pool entry
    try:
        assert wait_for_new_boot(rebooting, "boot-a", 600, poll=0) == "boot-b"
        assert closed == [pooled[0], pooled[0]]  # once per failed poll, and only that host's
    finally:
        monkeypatch.undo()
        rebooting.close()
        other.close()


def test_drop_connection_leaves_other_hosts_connected(sshd, ssh_host):
    """Real transports: a command running on one host survives another host's drop."""
    one = ssh_host()
    # Another pool entry on the same server: the pinned keys are part of the pool's key (one
    # more pinned key, never presented, changes nothing else). Not "localhost": a host without
    # /etc/hosts (the fresh Debian root) cannot resolve it.
    two = SshHost("127.0.0.1", port=sshd.port, user=sshd.user,
                  client_key=KeyFile(str(sshd.client_key_path)),
                  pinned_host_keys=[sshd.host_key, OTHER_HOST_KEY], connect_timeout=5.0)
    one.run(["true"])
    two.run(["true"])
    assert one.connection is not two.connection
    two_transport, logins = two.connection._transport, sshd.logins()
    results: list[CommandResult] = []
    running = threading.Thread(target=lambda: results.append(two.run(["sleep", "1"])))
    running.start()
    one.drop_connection()
    running.join()
    assert results and results[0].exit_code == 0
    assert two.connection._transport is two_transport and two_transport.is_active()
    one.run(["true"])  # reconnects
    assert one.connection.connects == 2 and sshd.logins() == logins + 1


def test_each_handle_connects_with_its_own_timeout(tmp_path):
    """The lab polls with a 5 s connect timeout through the same pool entry that its other
    handles (15 s) use; the timeout must be the polling handle's, not the first handle's."""
    key = Lab(tmp_path)._client_key()
    with socket.socket() as silent:  # accepts TCP (the kernel's backlog) but never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        patient = SshHost("127.0.0.1", port=port, client_key=KeyFile(key),
                          pinned_host_keys=[HOST_KEY], connect_timeout=30.0)
        hasty = SshHost("127.0.0.1", port=port, client_key=KeyFile(key),
                        pinned_host_keys=[HOST_KEY], connect_timeout=0.5)
        try:
            assert patient.connection is hasty.connection  # created by the patient one
            with pytest.raises(HostUnreachable, match="SSH handshake within 0.5 s"):
                hasty.run(["true"])
        finally:
            patient.close()


# -- the lab's checks around the wait ------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def lab_host(tmp_path) -> LabHost:
    directory = tmp_path / "hosts" / "lab-0"
    directory.mkdir(parents=True)
    (directory / "qemu.pid").write_text(f"{os.getpid()}\n")
    Lab(tmp_path)._client_key()
    return LabHost(HostSpec(index=0, directory=directory, ssh_port=_closed_port()), HOST_KEY)


def test_a_panic_in_this_boot_ends_the_wait(tmp_path, lab_host):
    console = lab_host.spec.path("console.log")
    console.write_text("[    0.000000] Linux version 6.1.0\n")
    writer = threading.Timer(1.0, lambda: console.open("a").write(PANIC))
    writer.start()
    try:
        with pytest.raises(LabError, match="kernel panicked while booting") as raised:
            Lab(tmp_path).wait_for_ssh(lab_host, deadline=60.0, log=lambda _: None)
    finally:
        writer.cancel()
    assert "Interrupt-remapped IO-APIC" in str(raised.value)  # the console tail comes with it


def test_a_panic_in_an_earlier_boot_does_not(tmp_path, lab_host):
    lab_host.spec.path("console.log").write_text(PANIC + "[    0.000000] Linux version 6.1.0\n")
    with pytest.raises(LabError, match="no SSH within 3 s .*Connection refused"):
        Lab(tmp_path).wait_for_ssh(lab_host, deadline=3.0, not_boot_id="before",
                                   log=lambda _: None)


def test_a_hung_boot_that_panics_and_reboots_itself_is_waited_for(tmp_path, lab_host):
    """The lab image's hung_task_panic=1 panic=10: the kernel reboots after this panic, so the
    wait goes on to its deadline (here: nothing answers) rather than ending at the panic."""
    lab_host.spec.path("console.log").write_text(
        "[    0.000000] Linux version 6.1.0\n[  242.6] INFO: task kworker/u5:0:9 blocked for "
        "more than 120 seconds.\n[  242.7] Kernel panic - not syncing: hung_task: blocked "
        "tasks\n[  252.7] Rebooting in 10 seconds..\n")
    with pytest.raises(LabError, match="no SSH within 3 s .*Connection refused"):
        Lab(tmp_path).wait_for_ssh(lab_host, deadline=3.0, console_seen=0, log=lambda _: None)


def test_qemu_gone_ends_the_wait(tmp_path, lab_host):
    lab_host.spec.path("qemu.pid").unlink()  # QEMU removes its pidfile when it exits
    with pytest.raises(LabError, match="QEMU exited"):
        Lab(tmp_path).wait_for_ssh(lab_host, deadline=60.0, log=lambda _: None)


def test_a_boot_whose_timer_stopped_ends_the_wait(tmp_path, lab_host):
    console = lab_host.spec.path("console.log")
    console.write_text("[    0.000000] Linux version 6.1.0\n" + TIMER_STALL)
    with pytest.raises(LabStalled, match="timer stopped firing") as raised:
        Lab(tmp_path).wait_for_ssh(lab_host, deadline=60.0, log=lambda _: None, console_seen=0)
    assert "Possible timer handling issue" in str(raised.value)


def test_two_stall_reports_are_not_yet_a_stalled_boot(tmp_path, lab_host):
    two = "".join(TIMER_STALL.splitlines(keepends=True)[:4])
    lab_host.spec.path("console.log").write_text("[    0.000000] Linux version 6.1.0\n" + two)
    with pytest.raises(LabError, match="no SSH within 3 s") as raised:
        Lab(tmp_path).wait_for_ssh(lab_host, deadline=3.0, log=lambda _: None, console_seen=0)
    assert not isinstance(raised.value, LabStalled)


def test_up_power_cycles_a_stalled_first_boot_once(tmp_path, lab_host, monkeypatch):
    lab, events = Lab(tmp_path), []
    waits = iter([LabStalled("lab-0: the booting kernel's timer stopped firing"), "boot-b"])

    def wait(host, *, log, console_seen=None):
        events.append(("wait", console_seen))
        answer = next(waits)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(lab, "wait_for_ssh", wait)
    monkeypatch.setattr(lab, "_stop", lambda host: events.append("stop"))
    monkeypatch.setattr(lab, "_start", lambda host: events.append("start"))
    lines: list[str] = []
    assert lab._wait_for_boot(lab_host, True, lines.append) == "boot-b"
    assert events == [("wait", 0), "stop", "start", ("wait", 0)]
    assert "cutting its power and starting it again (once)" in lines[0]


def test_up_power_cycles_only_once(tmp_path, lab_host, monkeypatch):
    lab = Lab(tmp_path)

    def wait(host, *, log, console_seen=None):
        raise LabStalled("lab-0: the booting kernel's timer stopped firing")

    monkeypatch.setattr(lab, "wait_for_ssh", wait)
    monkeypatch.setattr(lab, "_stop", lambda host: None)
    monkeypatch.setattr(lab, "_start", lambda host: None)
    with pytest.raises(LabStalled):
        lab._wait_for_boot(lab_host, True, lambda _: None)


def test_a_reboot_whose_boot_stalled_is_power_cycled_once(tmp_path, lab_host, monkeypatch):
    lab, events = Lab(tmp_path), []

    def stalled_reboot(ssh, deadline, **_):
        events.append("reboot")
        raise LabStalled("lab-0: the booting kernel's timer stopped firing")

    monkeypatch.setattr(hosts_module, "reboot_and_wait", stalled_reboot)
    monkeypatch.setattr(lab, "host", lambda index: lab_host)
    monkeypatch.setattr(lab, "_stop", lambda host: events.append("stop"))
    monkeypatch.setattr(lab, "_start", lambda host: events.append("start"))
    monkeypatch.setattr(lab, "wait_for_ssh", lambda host, *, log, console_seen=None:
                        events.append(("wait", console_seen)) or "boot-b")
    lab.reboot(0, log=lambda _: None)
    assert events == ["reboot", "stop", "start", ("wait", 0)]
