"""Lab hosts: create, start, wait for, reboot, power-cycle and remove emulated hypervisors.

State lives in one directory (default `.lab/` in the checkout):
    id_ed25519[.pub]      the client key every lab host authorizes
    known_hosts           each host's pinned key, for `lab ssh` and OpenSSH
    inventory.json        what the dev stack and the tests read (see `inventory`)
    hosts/lab-N/          disk overlay, NVRAM, seed (host key, hostname), console log, QMP
A host keeps its disk and SSH port across reboots and power cycles; `down` removes it.
Rebooting and waiting for a host are the product's (providers/host/reboot.py); this module adds
what only the lab can see while it waits: QEMU exiting, and a kernel panic on the console.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from providers.host import KeyFile, SshHost
from providers.host.reboot import (
    BootTimeout,
    boot_id,
    reboot_and_wait,
    request_reboot,
    wait_for_new_boot,
)

from .image import Image, cache_dir, current_image, ensure_image
from .machine import OVMF_VARS, HostSpec, qemu_argv
from .qmp import Qmp, QmpError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KERNEL_PANIC = b"Kernel panic - not syncing"
# The panic of a hung boot (kernel/hung_task.c): the lab image's hung_task_panic=1 panic=10
# make such a host reboot by itself (lab/image/overlay/etc/default/grub), so a wait goes on.
HUNG_TASK_PANIC = KERNEL_PANIC + b": hung_task: blocked tasks"
# RCU's stall report when a CPU's timer stopped firing (kernel/rcu/tree_stall.h,
# rcu_check_gp_kthread_expired_fqs_timer). Seen under TCG on a lab host's first boot, started
# alone beside busy hosts: the boot CPU idles for good, reported every 21 s, the boot never ends.
# Seen too on a reboot of the boot-order host (CPU 1's timer, at 5 s into the boot), while the
# machine ran other tests beside it. Three reports (a minute with no timer) and the host is
# power-cycled once (Lab.up, Lab.reboot); the product's own reboots are not the lab's to retry.
TIMER_STALL = b"kthread timer wakeup didn't happen"
TIMER_STALLS_TO_RESTART = 3
# TCG boots take 25-50 s alone, but 3 hosts booting on 2 busy cores have been seen to stall
# (RCU stalls) past 420 s; a panic in this boot ends the wait early (wait_for_ssh).
BOOT_DEADLINE = 900.0
# Polling a booting lab host. QEMU's user network accepts a connection on the forwarded port at
# once and only then connects to the guest (libslirp, tcp_subr.c: tcp_connect() accepts the
# host socket, then sends the guest a SYN); while the guest has no network yet, the connection
# just sits until the SSH banner times out. A short connect timeout keeps each such poll short.
POLL_SECONDS = 2.0
POLL_CONNECT_TIMEOUT = 5.0


class LabError(RuntimeError):
    pass


class LabStalled(LabError):
    """The booting kernel's timer stopped firing: this boot will not end."""


def lab_dir() -> Path:
    return Path(os.environ.get("VELA_LAB_DIR") or PROJECT_ROOT / ".lab")


@dataclass
class LabHost:
    spec: HostSpec
    host_key: str

    @property
    def name(self) -> str:
        return self.spec.name

    def pid(self) -> int | None:
        try:
            pid = int(self.spec.path("qemu.pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return self.pid() is not None


class Lab:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory or lab_dir())
        self.hosts_dir = self.directory / "hosts"
        self.key_path = self.directory / "id_ed25519"

    # -- the whole lab ---------------------------------------------------------------------------

    def up(self, count: int, *, wait: bool = True, log=print) -> list[LabHost]:
        """Hosts lab-0 .. lab-(count-1) running (created where missing), SSH ready."""
        if count < 1:
            raise LabError("a lab needs at least one host")
        cached = current_image()
        if cached.ready:
            log(f"lab image: cached at {cached.directory}")
        else:
            log("lab image: not built for this recipe yet: building it (needs root; about "
                "100 s on 2 cores)")
        image = ensure_image(log)
        self._client_key()
        accel = accelerator(image, log)
        hosts = [self._host(index, image, accel) for index in range(count)]
        started = set()
        for host in hosts:
            if not host.running():
                log(f"{host.name}: starting ({accel}), SSH on 127.0.0.1:{host.spec.ssh_port}")
                self._start(host)
                started.add(host.name)
        self.write_inventory()
        if wait:
            log(f"lab: waiting for SSH on {', '.join(host.name for host in hosts)} (up to "
                f"{BOOT_DEADLINE:.0f} s each; a note every 30 s while one is not up)")
            # One thread per host: each wait touches only its own host's connection.
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                list(pool.map(lambda host: self._wait_for_boot(
                    host, host.name in started, log), hosts))
        return hosts

    def _wait_for_boot(self, host: LabHost, started: bool, log) -> str:
        """Wait for a host `up` found running, or started (from its console's start)."""
        if not started:
            return self.wait_for_ssh(host, log=log)
        return self._unless_stalled(host, log, lambda: self.wait_for_ssh(
            host, log=log, console_seen=0))

    def _unless_stalled(self, host: LabHost, log, boot):
        """`boot()` (a wait for a boot of `host`), but a boot whose timer stalled is
        power-cycled once, as a BMC's watchdog would, and waited for again."""
        try:
            return boot()
        except LabStalled as stalled:
            log(f"{host.name}: {str(stalled).splitlines()[0]}; cutting its power and starting "
                f"it again (once)")
            self._stop(host)
            self._start(host)
            return self.wait_for_ssh(host, log=log, console_seen=0)

    def down(self, log=print) -> None:
        for host in self.hosts():
            self._stop(host)
            shutil.rmtree(host.spec.directory, ignore_errors=True)
            log(f"{host.name}: removed")
        for name in ["inventory.json", "known_hosts"]:
            (self.directory / name).unlink(missing_ok=True)

    def hosts(self) -> list[LabHost]:
        found = []
        for directory in sorted(self.hosts_dir.glob("lab-*"),
                                key=lambda path: int(path.name.split("-")[1])):
            state = json.loads((directory / "host.json").read_text())
            found.append(LabHost(HostSpec(**{**state["spec"], "directory": directory}),
                                 state["host_key"]))
        return found

    def host(self, index: int) -> LabHost:
        for host in self.hosts():
            if host.spec.index == index:
                return host
        raise LabError(f"there is no lab-{index}; `lab up --hosts {index + 1}` creates it")

    # -- one host --------------------------------------------------------------------------------

    def ssh_host(self, host: LabHost, **options) -> SshHost:
        return SshHost("127.0.0.1", port=host.spec.ssh_port, user="root",
                       client_key=KeyFile(str(self.key_path)), pinned_host_keys=[host.host_key],
                       name=host.name, **options)

    def boot_id(self, host: LabHost) -> str:
        return boot_id(self.ssh_host(host))

    def wait_for_ssh(self, host: LabHost, *, deadline: float = BOOT_DEADLINE,
                     not_boot_id: str | None = None, log=print,
                     console_seen: int | None = None) -> str:
        """Wait until the host answers over SSH (in a new boot, if `not_boot_id` is given);
        return its boot id. `console_seen`: where this boot's console output starts (by
        default the console's size now: a reboot keeps the earlier boots' output)."""
        with self._watched(host, deadline, console_seen) as (ssh, check):
            return wait_for_new_boot(ssh, not_boot_id, deadline, poll=POLL_SECONDS,
                                     progress=log, check=check)

    def reboot(self, index: int, *, wait: bool = True, log=print) -> None:
        """Reboot from inside, as an operator would, with the product's reboot-and-wait."""
        host = self.host(index)
        if not wait:
            request_reboot(self.ssh_host(host))
            return
        log(f"{host.name}: rebooting from inside; waiting up to {BOOT_DEADLINE:.0f} s for SSH "
            f"in a new boot")
        def reboot() -> str:
            with self._watched(host, BOOT_DEADLINE) as (ssh, check):
                return reboot_and_wait(ssh, BOOT_DEADLINE, poll=POLL_SECONDS, progress=log,
                                       check=check)

        self._unless_stalled(host, log, reboot)

    def power_cycle(self, index: int, *, wait: bool = True, log=print) -> None:
        """Cut the power and turn it back on: QEMU quits at once and starts again with the same
        disk, NVRAM and port."""
        host = self.host(index)
        log(f"{host.name}: cutting the power, then starting it again")
        self._stop(host)
        self._start(host)
        if wait:
            self.wait_for_ssh(host, log=log, console_seen=0)  # _start began a new console log

    @contextmanager
    def _watched(self, host: LabHost, deadline: float, console_seen: int | None = None):
        """What the lab adds to the product's wait (providers/host/reboot.py): an SSH handle
        with the lab's short connect timeout, and a check that ends the wait when QEMU exits or
        the kernel panics on the console after byte `console_seen`; a timeout becomes a
        LabError with the console's tail."""
        if console_seen is None:
            console_seen = self._console_size(host)

        def check() -> None:
            if not host.running():
                raise LabError(f"{host.name}: QEMU exited; console:\n{self.console_tail(host)}")
            since = self._console_since(host, console_seen)
            if KERNEL_PANIC in since.replace(HUNG_TASK_PANIC, b""):
                # A panicked kernel never answers; say so now rather than after the deadline.
                raise LabError(f"{host.name}: the kernel panicked while booting; console:\n"
                               f"{self.console_tail(host)}")
            if since.count(TIMER_STALL) >= TIMER_STALLS_TO_RESTART:
                raise LabStalled(f"{host.name}: the booting kernel's timer stopped firing "
                                 f"({TIMER_STALLS_TO_RESTART} RCU stall reports); console:\n"
                                 f"{self.console_tail(host)}")

        try:
            yield self.ssh_host(host, connect_timeout=POLL_CONNECT_TIMEOUT), check
        except BootTimeout as timeout:
            raise LabError(f"{host.name}: no SSH within {deadline:.0f} s (last: "
                           f"{timeout.last or 'answering from the old boot'}); console:\n"
                           f"{self.console_tail(host)}") from timeout

    @staticmethod
    def _console_size(host: LabHost) -> int:
        try:
            return host.spec.path("console.log").stat().st_size
        except OSError:
            return 0

    @staticmethod
    def _console_since(host: LabHost, offset: int) -> bytes:
        try:
            with open(host.spec.path("console.log"), "rb") as console:
                console.seek(offset)
                return console.read()
        except OSError:
            return b""

    def console_tail(self, host: LabHost, lines: int = 30) -> str:
        try:
            text = host.spec.path("console.log").read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    # -- inventory -------------------------------------------------------------------------------

    def write_inventory(self) -> Path:
        hosts = self.hosts()
        inventory = {
            "version": 1,
            "privateKeyFile": str(self.key_path),
            "hosts": [{"name": host.name, "address": "127.0.0.1", "port": host.spec.ssh_port,
                       "user": "root", "hostKey": host.host_key} for host in hosts],
        }
        path = self.directory / "inventory.json"
        path.write_text(json.dumps(inventory, indent=2) + "\n")
        (self.directory / "known_hosts").write_text("".join(
            f"[127.0.0.1]:{host.spec.ssh_port} {host.host_key}\n" for host in hosts))
        return path

    # -- internals -------------------------------------------------------------------------------

    def _client_key(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.key_path.exists():
            _keygen(self.key_path, "vela-lab-client")
        return str(self.key_path)

    def _host(self, index: int, image: Image, accel: str) -> LabHost:
        directory = self.hosts_dir / f"lab-{index}"
        if (directory / "host.json").exists():
            return next(host for host in self.hosts() if host.spec.index == index)
        before = next((host for host in self.hosts() if host.spec.index == index - 1), None)
        directory.mkdir(parents=True)
        spec = HostSpec(index=index, directory=directory, ssh_port=_free_port(), accel=accel,
                        fabric_port=_free_port(),
                        fabric_uplink=before.spec.fabric_port if before else 0)
        seed = directory / "seed"
        seed.mkdir()
        _keygen(seed / "ssh_host_ed25519_key", spec.name)
        shutil.copy(f"{self.key_path}.pub", seed / "authorized_keys")
        (seed / "hostname").write_text(spec.name)
        shutil.copy(OVMF_VARS, directory / "OVMF_VARS.fd")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(image.disk), str(directory / "disk.qcow2")], check=True)
        host_key = " ".join((seed / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        fields = {key: value for key, value in spec.__dict__.items() if key != "directory"}
        (directory / "host.json").write_text(json.dumps(
            {"spec": fields, "host_key": host_key, "image": image.digest}, indent=2))
        return LabHost(spec, host_key)

    def _start(self, host: LabHost) -> None:
        host.spec.path("console.log").unlink(missing_ok=True)
        result = subprocess.run(qemu_argv(host.spec), capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"{host.name}: QEMU did not start: {result.stderr.strip()}")

    def _stop(self, host: LabHost) -> None:
        pid = host.pid()
        if pid is None:
            return
        try:
            with Qmp(host.spec.path("qmp.sock")) as monitor:
                monitor.execute("quit")
        except (QmpError, OSError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not host.running():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self._forget_connection(host)

    def _forget_connection(self, host: LabHost) -> None:
        """QEMU is gone and took the host's end of our SSH connection with it: drop this
        host's pooled transport, and only this host's (others may be busy in other threads)."""
        if self.key_path.exists():  # no key, no SshHost handle, and nothing pooled either
            self.ssh_host(host).drop_connection()


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerator(image: Image, log=print) -> str:
    """"kvm" if KVM really runs a guest here, else "tcg". VELA_LAB_ACCEL forces one.

    /dev/kvm existing is not enough: some nested setups expose it but hang every guest, so a
    short probe boots the image's kernel under KVM and waits for its first console line. The
    answer is cached per boot of this machine."""
    forced = os.environ.get("VELA_LAB_ACCEL")
    if forced in {"kvm", "tcg"}:
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cached = cache_dir() / f"accel-{boot_id}"
    if cached.exists():
        return cached.read_text().strip()
    log("lab: probing whether KVM runs guests on this machine ...")
    answer = "kvm" if _kvm_boots(image) else "tcg"
    cached.write_text(answer)
    return answer


def _kvm_boots(image: Image, seconds: float = 20.0) -> bool:
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-m", "256", "-nodefaults",
         "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(image.kernel),
         "-append", "console=ttyS0 panic=-1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds
        os.set_blocking(process.stdout.fileno(), False)
        seen = b""
        while time.monotonic() < deadline and process.poll() is None:
            chunk = process.stdout.read() or b""
            seen += chunk
            if b"Linux version" in seen:
                return True
            time.sleep(0.2)
        return False
    finally:
        process.kill()
        process.wait()
