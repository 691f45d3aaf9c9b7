"""SSH host access against a real sshd on loopback: trust, keys, deadlines, drops, quoting.

Every refusal must happen before anything runs on the host; the server's own log (VERBOSE
level: one line per login and per command) is the witness.
"""

from __future__ import annotations

import os
import pickle
import socket
import stat
import subprocess
import threading
import time

import pytest

from providers.errors import (
    AuthenticationFailed,
    ClientKeyError,
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    HostKeyMismatch,
    HostUnreachable,
    UnknownHostKey,
)
from providers.host import AgentKeys, KeyFile, SecretKey, SshHost
from tests.support.sshd import Sshd, free_port, keygen
from tests.support.threads import run_concurrently


def test_commands_share_one_connection_across_threads(tmp_path):
    # A server of its own, whose log holds this test's logins only: the session's server also
    # serves provider processes of earlier modules (a fresh Debian root's run once counted a
    # login more there than this test's connections made).
    server = Sshd(tmp_path / "sshd").start()

    def handle() -> SshHost:  # a fresh handle for every command, as provider calls make them
        return SshHost("127.0.0.1", port=server.port, user=server.user,
                       client_key=KeyFile(str(server.client_key_path)),
                       pinned_host_keys=[server.host_key], connect_timeout=5.0)

    def worker(number: int) -> list[str]:
        return [handle().run(["echo", f"{number}-{step}"]).text.strip() for step in range(5)]

    try:
        outputs = run_concurrently(worker, list(range(4)))
        assert outputs == [[f"{n}-{s}" for s in range(5)] for n in range(4)]
        assert handle().connection.connects == 1, server.log()[-3000:]
        assert server.logins() == 1, server.log()[-3000:]
        assert server.sessions() == 20
    finally:
        handle().drop_connection()
        server.stop()


def test_known_hosts_file_plain_and_hashed(sshd, ssh_host, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key}\n")
    assert ssh_host(pinned_host_keys=[], known_hosts=str(known)).run(["true"]).exit_code == 0
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "|1|" in known.read_text()
    hashed = ssh_host(pinned_host_keys=[], known_hosts=str(known), connect_timeout=5.5)
    assert hashed.run(["true"]).exit_code == 0


def test_unknown_host_key_is_refused_with_how_to_pin(sshd, ssh_host, tmp_path):
    before = sshd.logins(), sshd.sessions()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = ssh_host(pinned_host_keys=[], known_hosts=str(empty))
    with pytest.raises(UnknownHostKey) as caught:
        host.run(["touch", str(tmp_path / "ran")])
    message = str(caught.value)
    assert sshd.host_key in message  # the exact line to pin
    assert "SHA256:" in message and "ssh-keygen -lf" in message and "Nothing was run" in message
    assert (sshd.logins(), sshd.sessions()) == before
    assert not (tmp_path / "ran").exists()


def test_changed_host_key_is_refused(sshd, ssh_host, tmp_path):
    before = sshd.logins(), sshd.sessions()
    other = keygen(tmp_path / "other_host_key")
    with pytest.raises(HostKeyMismatch, match="HOST KEY CHANGED") as caught:
        ssh_host(pinned_host_keys=[other]).run(["true"])
    assert sshd.host_key in str(caught.value)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    with pytest.raises(HostKeyMismatch, match="HOST KEY CHANGED"):
        ssh_host(pinned_host_keys=[], known_hosts=str(known)).run(["true"])
    # A pin of another key type: the server cannot prove it, which is a change too.
    rsa = keygen(tmp_path / "rsa_host_key", "rsa")
    with pytest.raises(HostKeyMismatch, match="offers none of the host key types"):
        ssh_host(pinned_host_keys=[rsa]).run(["true"])
    assert (sshd.logins(), sshd.sessions()) == before


def test_wrong_client_key_is_refused(sshd, ssh_host, tmp_path):
    before = sshd.sessions()
    keygen(tmp_path / "stranger")
    with pytest.raises(AuthenticationFailed, match="authorized_keys") as caught:
        ssh_host(client_key=KeyFile(str(tmp_path / "stranger"))).run(["true"])
    assert sshd.user in str(caught.value)
    assert sshd.sessions() == before


def test_unreachable_hosts_fail_fast_and_clearly(ssh_host):
    closed = free_port()
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="connection refused|Connection refused"):
        ssh_host(port=closed).run(["true"])
    assert time.monotonic() - started < 2
    with socket.socket() as silent:  # accepts TCP but never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(HostUnreachable, match="handshake"):
            ssh_host(port=silent.getsockname()[1], connect_timeout=1.0).run(["true"])
        assert time.monotonic() - started < 5


def test_command_timeout_kills_the_remote_command(ssh_host, tmp_path):
    marker = tmp_path / "late"
    host = ssh_host()
    with pytest.raises(CommandTimeout, match="did not finish within 1 s") as caught:
        host.run(["sh", "-c", f"sleep 3; touch {marker}"], timeout=1)
    assert caught.value.host == host.name and "127.0.0.1" in host.name  # names the host
    time.sleep(3)
    assert not marker.exists()
    assert ssh_host().run(["echo", "still usable"]).text == "still usable\n"


def test_dropped_connection_is_reestablished(sshd, ssh_host):
    host = ssh_host()
    assert host.run(["true"]).exit_code == 0
    logins = sshd.logins()
    sshd.drop_connections()
    time.sleep(0.2)
    assert host.run(["echo", "back"]).text == "back\n"
    assert sshd.logins() - logins == 1
    assert host.connection.connects == 2


def test_drop_during_a_command_is_reported_not_retried(sshd, ssh_host, tmp_path):
    host = ssh_host()
    host.run(["true"])
    counter = tmp_path / "runs"
    timer = threading.Timer(1.0, sshd.drop_connections)
    timer.start()
    with pytest.raises(ConnectionLost, match="may or may not have finished"):
        host.run(["sh", "-c", f"echo x >> {counter}; sleep 5"], timeout=20)
    timer.join()
    assert counter.read_text() == "x\n"  # ran once, never re-run behind the caller's back
    assert host.run(["true"]).exit_code == 0


def test_sshd_restart_on_the_same_port(sshd, ssh_host):
    host = ssh_host()
    host.run(["true"])
    sshd.stop()
    sshd.start()
    assert host.run(["echo", "ok"]).text == "ok\n"


def test_metacharacters_never_reach_a_shell_unquoted(ssh_host, tmp_path):
    hostile = (f"$(touch {tmp_path}/a); `touch {tmp_path}/b`; touch {tmp_path}/c | "
               f"true && touch {tmp_path}/d > {tmp_path}/e '\"\\")
    host = ssh_host()
    assert host.run(["printf", "%s", hostile]).text == hostile
    assert host.run(["sh", "-c", 'printf "%s" "$1"', "sh", hostile]).text == hostile
    assert os.listdir(tmp_path) == []


def test_failures_carry_host_command_status_and_stderr(ssh_host):
    with pytest.raises(CommandFailed) as caught:
        ssh_host().run(["ls", "/definitely/not/here"])
    error = caught.value
    assert error.exit_code == 2 and "No such file" in error.stderr
    assert "127.0.0.1" in error.host and "ls /definitely/not/here" in str(error)


def test_files_and_large_streams(ssh_host, tmp_path):
    host = ssh_host(sysroot=str(tmp_path))
    payload = os.urandom(3 * 1024 * 1024)
    host.write_file("/var/lib/vela/blob", payload, mode=0o640)
    stored = tmp_path / "var/lib/vela/blob"
    assert stored.read_bytes() == payload and stat.S_IMODE(stored.stat().st_mode) == 0o640
    assert host.read_file("/var/lib/vela/blob") == payload
    # Lots of output while stdin is still being sent must not deadlock.
    result = host.run(["sh", "-c", "head -c 4000000 /dev/zero; cat > /dev/null"],
                      stdin=payload, timeout=60)
    assert len(result.stdout) == 4000000


def test_client_key_from_a_secret_string(sshd, ssh_host):
    key = SecretKey(sshd.client_key_text)
    assert ssh_host(client_key=key).run(["echo", "secret"]).text == "secret\n"
    assert "PRIVATE" not in repr(key)
    with pytest.raises(TypeError, match="never be pickled"):
        pickle.dumps(key)
    with key.temporary_file() as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with open(path) as written:
            assert written.read().strip() == sshd.client_key_text.strip()
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    with pytest.raises(ClientKeyError, match="not a private key"):
        SecretKey("ssh-ed25519 AAAA public-not-private")


def test_encrypted_key_file(sshd, ssh_host, tmp_path):
    path = tmp_path / "locked"
    keygen(path, passphrase="s3cret phrase")
    (sshd.directory / "authorized_keys").write_text(
        f"{sshd.client_public_key}\n{(tmp_path / 'locked.pub').read_text()}")
    assert ssh_host(client_key=KeyFile(str(path), "s3cret phrase")).run(["true"]).exit_code == 0
    with pytest.raises(ClientKeyError, match="encrypted"):
        ssh_host(client_key=KeyFile(str(path))).run(["true"])
    with pytest.raises(ClientKeyError, match="wrong passphrase"):
        ssh_host(client_key=KeyFile(str(path), "not it")).run(["true"])
    secret = SecretKey(path.read_text(), "s3cret phrase")
    assert ssh_host(client_key=secret).run(["true"]).exit_code == 0
    with pytest.raises(ClientKeyError, match="encrypted"):
        ssh_host(client_key=SecretKey(path.read_text())).run(["true"])
    with pytest.raises(ClientKeyError, match="does not exist"):
        ssh_host(client_key=KeyFile(str(tmp_path / "missing"))).run(["true"])


def test_client_key_from_the_agent(sshd, ssh_host, tmp_path, monkeypatch):
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        with pytest.raises(ClientKeyError, match="agent holds no keys"):
            ssh_host(client_key=AgentKeys()).run(["true"])
        subprocess.run(["ssh-add", "-q", str(sshd.client_key_path)], check=True,
                       env={**os.environ, "SSH_AUTH_SOCK": str(socket_path)})
        assert ssh_host(client_key=AgentKeys()).run(["echo", "agent"]).text == "agent\n"
    finally:
        agent.terminate()
        agent.wait()


def test_connection_settings_are_validated_before_connecting(sshd):
    key = KeyFile(str(sshd.client_key_path))
    for bad in [dict(address="127.0.0.1;id"), dict(address="127.0.0.1", port=0),
                dict(address="127.0.0.1", user="root;id"),
                dict(address="127.0.0.1", pinned_host_keys=["ssh-ed25519 not-base64!"])]:
        with pytest.raises(ValueError):
            SshHost(client_key=key, **bad)


def test_a_host_behind_a_jump_host_is_reached_through_it_with_its_own_key_checked(
        sshd, ssh_host, tmp_path):
    # The loopback sshd is both the jump host and the target: the target's connection is a
    # direct-tcpip channel of the jump's transport, and logs in (and is key-checked) on its own.
    jump = ssh_host(name="jump")
    logins = sshd.logins()
    behind = ssh_host(via=jump, name="behind")
    assert behind.run(["echo", "through"]).text == "through\n"
    assert sshd.logins() - logins == 2  # the jump's login, then the target's through it
    assert behind.connection is not jump.connection
    other = keygen(tmp_path / "other_host_key")
    before = sshd.logins()
    with pytest.raises(HostKeyMismatch, match="HOST KEY CHANGED"):
        ssh_host(via=jump, name="impostor", pinned_host_keys=[other]).run(["true"])
    assert sshd.logins() == before  # refused before logging in behind the jump


def test_a_target_the_jump_host_cannot_reach_is_named_with_the_jump(ssh_host):
    jump = ssh_host(name="jump")
    behind = ssh_host(via=jump, name="behind", port=free_port())
    with pytest.raises(HostUnreachable) as caught:
        behind.run(["true"])
    assert "jump could not open a connection" in str(caught.value)
    assert "AllowTcpForwarding" in str(caught.value)


def test_a_target_behind_a_jump_that_went_away_is_reached_again(sshd, ssh_host):
    jump = ssh_host(name="jump")
    behind = ssh_host(via=jump, name="behind")
    assert behind.run(["echo", "one"]).text == "one\n"
    sshd.drop_connections()  # the jump host and everything through it went away
    behind.drop_connection()
    assert behind.run(["echo", "two"]).text == "two\n"
