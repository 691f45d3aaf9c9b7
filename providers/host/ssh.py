"""A host reached over SSH (paramiko), with one shared connection per host per process.

The Pulumi provider process runs up to 4 provider calls at once, often against the same host, so
`SshHost` objects are cheap handles onto a process-wide pool: each distinct (address, port, user,
trusted keys, client key) gets one SSH transport, and every command is a new channel on it. A
dropped connection is re-established at the next command; a command that was running when it
dropped fails with `ConnectionLost` (whether it finished is unknown, so it is never re-run).
`SshHost.drop_connection` closes one host's transport and no other's: what a wait for a host
that rebooted uses, where closing the whole pool would cut every other host's commands.
A host reachable only through another (a guest on its hypervisor's private network, a node
behind a bastion) names it as `via`: its connection is a `direct-tcpip` channel on the jump
host's pooled transport (what `ssh -J` does), and its own host key is checked as any other's.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Sequence

import paramiko

from ..errors import (
    AuthenticationFailed,
    ClientKeyError,
    CommandTimeout,
    ConnectionLost,
    HostKeyMismatch,
    HostUnreachable,
    VelaError,
)
from ..validate import host_address, port_number, user_name
from .base import CommandResult, Host
from .keys import ClientKey, HostKeyCheck, fingerprint, known_hosts_name

_READ_CHUNK = 1 << 16
# paramiko logs every failed handshake with a traceback from its transport thread; we turn each
# failure into an error that says what happened, so keep its log out of the user's terminal
# unless the application configures logging itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class _Connection:
    """One SSH transport to one host, shared by threads and reconnected when it drops.

    Every handle with the same pool key shares it, but each call uses the calling handle's
    name and connect timeout (a lab wait polling with 5 s and a provider with 15 s may share
    one transport); address, port, user and keys are the same for all of them by the key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None
        self.connects = 0
        self.execs = 0

    def open_channel(self, spec: SshHost) -> paramiko.Channel:
        transport = self._live_transport(spec)
        try:
            return transport.open_session(timeout=spec.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError):
            # The transport died between the liveness check and the request (the host rebooted,
            # sshd restarted, a NAT dropped us), or it is half-open: the host went away without
            # closing TCP (power loss, a hang, a reset until its new kernel answers with a RST),
            # so is_active() stays true (paramiko's keepalive is sent with wait=False: nothing
            # waits for an answer) and paramiko's Transport.open_channel raises "Timeout opening
            # channel." after the timeout (through a proxy that froze its connections: 3.3 s
            # with a 3 s timeout). No command was sent yet, so reconnect and retry.
            self._drop(transport)
            transport = self._live_transport(spec)
            try:
                return transport.open_session(timeout=spec.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self._drop(transport)
                raise ConnectionLost(spec.name, f"cannot open an SSH session: {exc}") from exc

    def drop_if_dead(self) -> None:
        with self._lock:
            if self._transport is not None and not self._transport.is_active():
                _close_quietly(self._transport)
                self._transport = None

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                _close_quietly(self._transport)
                self._transport = None

    def _drop(self, transport: paramiko.Transport) -> None:
        with self._lock:
            if self._transport is transport:
                _close_quietly(transport)
                self._transport = None

    def _live_transport(self, spec: SshHost) -> paramiko.Transport:
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                if self._transport is not None:
                    self._transport.close()
                self._transport = self._connect(spec)
                self.connects += 1
            return self._transport

    def _connect(self, spec: SshHost) -> paramiko.Transport:
        where = f"{spec.address}:{spec.port}"
        expected = spec.host_keys.expected(spec.address, spec.port)
        sock = self._through(spec, where) if spec.via is not None else self._socket(spec, where)
        transport = paramiko.Transport(sock)
        try:
            if expected:
                transport.get_security_options().key_types = HostKeyCheck.algorithms(expected)
            transport.banner_timeout = spec.connect_timeout
            transport.handshake_timeout = spec.connect_timeout
            self._handshake(spec, transport, expected, where)
            spec.host_keys.verify(spec.name, spec.address, spec.port,
                                  transport.get_remote_server_key(), expected)
            self._authenticate(spec, transport)
            transport.set_keepalive(15)
            return transport
        except BaseException:
            transport.close()
            raise

    @staticmethod
    def _socket(spec: SshHost, where: str) -> socket.socket:
        try:
            sock = socket.create_connection((spec.address, spec.port), spec.connect_timeout)
        except TimeoutError as exc:
            raise HostUnreachable(spec.name, (
                f"no answer from {where} within {spec.connect_timeout:g} s: check the address, "
                f"that the host is up and that no firewall drops SSH")) from exc
        except OSError as exc:
            raise HostUnreachable(spec.name, (
                f"cannot reach {where}: {exc.strerror or exc}. Check the address and port and "
                f"that sshd runs on the host")) from exc
        # Commands are small request/response exchanges: without NODELAY, Nagle's algorithm
        # and delayed ACKs add ~40 ms to every channel open.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    @staticmethod
    def _through(spec: SshHost, where: str) -> paramiko.Channel:
        """A channel from the jump host to the target's SSH port (RFC 4254 section 7.2). A
        jump transport that looks alive but is not (its host went away: see `open_channel`) is
        dropped and the channel asked for once more over a fresh one; a refusal by the jump
        (ChannelException: it could not connect) is final."""
        jump = spec.via
        for _attempt in (1, 2):
            transport = jump.connection._live_transport(jump)
            try:
                return transport.open_channel("direct-tcpip", (spec.address, spec.port),
                                              ("127.0.0.1", 0), timeout=spec.connect_timeout)
            except paramiko.ChannelException as exc:
                failure = exc
                break
            except (paramiko.SSHException, EOFError, OSError) as exc:
                failure = exc
                jump.connection._drop(transport)
        reason = str(failure) or type(failure).__name__
        raise HostUnreachable(spec.name, (
            f"{jump.name} could not open a connection to {where} for us ({reason}): check "
            f"that {where} is up and reachable from {jump.name}, and that the sshd of "
            f"{jump.name} allows TCP forwarding (AllowTcpForwarding)")) from failure

    @staticmethod
    def _handshake(spec: SshHost, transport: paramiko.Transport, expected: list,
                   where: str) -> None:
        try:
            transport.start_client(timeout=spec.connect_timeout)
            if not transport.is_active() or not transport.initial_kex_done:
                # start_client returns quietly when its timeout passes mid-negotiation.
                raise paramiko.SSHException("no SSH key exchange")
        except paramiko.IncompatiblePeer as exc:
            if expected:
                raise HostKeyMismatch(spec.name, (
                    f"{where} offers none of the host key types {spec.host_keys.source()} "
                    f"({', '.join(sorted({key.get_name() for key in expected}))}): the host was "
                    f"probably reinstalled or is not the host you pinned. Refusing to connect; "
                    f"nothing was run.")) from exc
            raise HostUnreachable(spec.name, f"SSH negotiation with {where} failed: {exc}")\
                from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HostUnreachable(spec.name, (
                f"{where} did not complete an SSH handshake within {spec.connect_timeout:g} s "
                f"({exc or type(exc).__name__}): is it an SSH server?")) from exc

    @staticmethod
    def _authenticate(spec: SshHost, transport: paramiko.Transport) -> None:
        keys = spec.client_key.load()
        for key in keys:
            try:
                transport.auth_publickey(spec.user, key)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise HostUnreachable(spec.name, f"connection dropped during login: {exc}")\
                    from exc
            if transport.is_authenticated():
                return
        tried = ", ".join(fingerprint(key) for key in keys)
        raise AuthenticationFailed(spec.name, (
            f"{spec.address}:{spec.port} refused the key(s) {tried} for user {spec.user!r}: add "
            f"the matching public key to ~{spec.user}/.ssh/authorized_keys on the host, or "
            f"configure the private key that is already there"))


_POOL: dict[tuple, _Connection] = {}
_POOL_LOCK = threading.Lock()


def close_all_connections() -> None:
    """Close every pooled connection of this process (tests, and the end of a program); never
    from code that runs beside other hosts' work: it cuts their commands too. One host that went
    away: `SshHost.drop_connection`."""
    with _POOL_LOCK:
        connections = list(_POOL.values())
        _POOL.clear()
    for connection in connections:
        connection.close()


class SshHost(Host):
    """A host reached over SSH. Construct freely: instances share pooled connections."""

    def __init__(self, address: str, *, client_key: ClientKey, port: int = 22,
                 user: str = "root", pinned_host_keys: Sequence[str] = (),
                 known_hosts: str | None = None, sysroot: str = "/", name: str | None = None,
                 connect_timeout: float = 15.0, sudo: bool | None = None,
                 via: SshHost | None = None) -> None:
        self.address = host_address(address)
        self.port = port_number(port)
        self.user = user_name(user)
        if not isinstance(client_key, ClientKey):
            raise ClientKeyError("an SSH host needs a client key (a key file, the agent, or a "
                                 "secret key)")
        self.client_key = client_key
        self.host_keys = HostKeyCheck(pinned_host_keys, known_hosts)
        self.connect_timeout = float(connect_timeout)
        self.via = via  # the jump host this one is reached through, or None
        label = name or f"{self.user}@{known_hosts_name(self.address, self.port)}"
        super().__init__(label, sysroot, self.user != "root" if sudo is None else sudo)
        self._pool_key = (self.address, self.port, self.user,
                          tuple(key.asbytes() for key in self.host_keys.pinned),
                          self.host_keys.known_hosts, client_key.identity(),
                          via._pool_key if via is not None else None)

    @property
    def connection(self) -> _Connection:
        with _POOL_LOCK:
            connection = _POOL.get(self._pool_key)
            if connection is None:
                connection = _POOL[self._pool_key] = _Connection()
            return connection

    def drop_connection(self) -> None:
        """Close this host's pooled transport, if there is one, so that its next command
        connects afresh; every other host's connection is left alone, but for hosts reached
        through this one (`via`), whose connections ride on it. For a host known to have gone
        away (rebooted, powered off): its old transport can look alive long after (see
        `_Connection.open_channel`). A command running on this host over it fails with
        `ConnectionLost`. The pool entry stays, so handles already holding it keep working."""
        with _POOL_LOCK:
            connection = _POOL.get(self._pool_key)
        if connection is not None:
            connection.close()

    def _execute(self, command: str, stdin: bytes | None, deadline: float) -> CommandResult:
        connection = self.connection
        channel = connection.open_channel(self)
        connection.execs += 1
        try:
            channel.exec_command(command)
            feeder = _feed_stdin(channel, stdin)
            stdout, stderr, status = self._collect(channel, command, deadline)
            feeder.join(timeout=1.0)
        except VelaError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            connection.drop_if_dead()
            raise ConnectionLost(self.name, (
                f"the connection dropped while running {command[:200]!r}; it may or may not "
                f"have finished. The next command reconnects.")) from exc
        finally:
            channel.close()
        return CommandResult(command, status, stdout, stderr)

    def _collect(self, channel: paramiko.Channel, command: str,
                 deadline: float) -> tuple[bytes, bytes, int]:
        stdout, stderr = bytearray(), bytearray()
        give_up = time.monotonic() + deadline
        while True:
            while channel.recv_ready():
                stdout += channel.recv(_READ_CHUNK)
            while channel.recv_stderr_ready():
                stderr += channel.recv_stderr(_READ_CHUNK)
            finished = channel.exit_status_ready() and channel.eof_received
            if finished and not channel.recv_ready() and not channel.recv_stderr_ready():
                return bytes(stdout), bytes(stderr), self._exit_status(channel)
            if channel.closed or not channel.get_transport().is_active():
                return bytes(stdout), bytes(stderr), self._exit_status(channel)
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(self.name, command, -1, stdout.decode(errors="replace"),
                                     stderr.decode(errors="replace"),
                                     reason=f"did not return within {deadline:g} s")
            select.select([channel], [], [], min(remaining, 1.0))

    @staticmethod
    def _exit_status(channel: paramiko.Channel) -> int:
        # paramiko reports -1 when the channel closed without an exit status: the connection
        # went away under the command.
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        if status == -1:
            raise EOFError("the channel closed before the command reported its exit status")
        return status

    def close(self) -> None:
        with _POOL_LOCK:
            connection = _POOL.pop(self._pool_key, None)
        if connection is not None:
            connection.close()


def _feed_stdin(channel: paramiko.Channel, data: bytes | None) -> threading.Thread:
    """Send stdin from a thread: a command that writes a lot before reading all of its input
    would otherwise deadlock against us."""

    def feed() -> None:
        try:
            if data:
                channel.sendall(data)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the command exited early or the connection dropped; _collect reports it

    thread = threading.Thread(target=feed, name="ssh-stdin", daemon=True)
    thread.start()
    return thread


def _close_quietly(transport: paramiko.Transport) -> None:
    """Close a connection that may already be dead. Through a jump host, its socket is a
    channel of the jump's connection, and closing that channel sends a message there: when the
    jump's connection went away first, paramiko raises EOFError (or a socket error) from close.
    The connection is gone either way."""
    with contextlib.suppress(EOFError, OSError, paramiko.SSHException):
        transport.close()
