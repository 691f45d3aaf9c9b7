"""A real OpenSSH server on loopback, private to a test session.

It has its own host key, accepts one generated client key, logs at VERBOSE level to a file (so
tests can count logins and sessions as the server saw them), and can drop every open connection
or restart on the same port to simulate a host going away.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keygen(path: Path, key_type: str = "ed25519", passphrase: str = "") -> str:
    """Create a key pair; return the public key line (type and base64, no comment)."""
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-C", "vela-test",
                    "-f", str(path)], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


class Sshd:
    """Start with `Sshd(directory).start()`; stop with `.stop()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = _current_user()
        self.host_key_path = self.directory / "ssh_host_ed25519_key"
        self.client_key_path = self.directory / "client_ed25519"
        self.log_path = self.directory / "sshd.log"
        self.host_key = keygen(self.host_key_path)
        self.client_public_key = keygen(self.client_key_path)
        (self.directory / "authorized_keys").write_text(self.client_public_key + "\n")
        self.config_path = self.directory / "sshd_config"
        self.process: subprocess.Popen | None = None

    @property
    def client_key_text(self) -> str:
        return self.client_key_path.read_text()

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key_path}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            f"PidFile {self.directory / 'sshd.pid'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no",
            "StrictModes no", "PermitRootLogin prohibit-password", "LogLevel VERBOSE",
            "MaxSessions 32", "MaxStartups 64", "ClientAliveInterval 0", "PrintMotd no",
        ]
        # OpenSSH >= 9.8 penalises sources that fail logins; our negative tests would lock
        # later tests out of loopback. Older servers reject the keyword, so probe for it.
        self.config_path.write_text("\n".join(lines + ["PerSourcePenalties no"]) + "\n")
        if subprocess.run([SSHD, "-t", "-f", str(self.config_path)],
                          capture_output=True).returncode != 0:
            self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Sshd:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self._write_config()
        # sshd writes to its own copy of the descriptor; ours is closed once it has started.
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config_path)],
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited at start: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.drop_connections()
        self.process = None

    def drop_connections(self) -> None:
        """Kill the per-connection server processes, as a crash or reboot of the host would."""
        if self.process is None:
            return
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.log().count(text)

    def sessions(self) -> int:
        """Commands the server started (OpenSSH logs one line per exec at VERBOSE)."""
        return self.count("Starting session: command")

    def logins(self) -> int:
        return self.count("Accepted publickey")


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], list(children.get(pid, []))
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found
