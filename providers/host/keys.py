"""SSH keys: where our client key comes from, and which host keys we trust.

Client keys come from a file, an SSH agent, or a secret string. A secret string stays in memory;
the only time it touches disk is `SecretKey.temporary_file()`, for tools that insist on a path
(libvirt's qemu+ssh), as a 0600 file in a private directory, removed on exit.

Host keys are trusted only when pinned (OpenSSH public key lines, from config) or present in a
known_hosts file. An unknown or changed key is refused with a message that says how to pin it;
nothing is ever added on first use.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import paramiko

from ..errors import ClientKeyError, HostKeyMismatch, InvalidValue, UnknownHostKey

_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint (`ssh-keygen -lf` prints the same)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_line(key: paramiko.PKey) -> str:
    """The key as one OpenSSH public key line without comment, the form used for pinning."""
    return f"{key.get_name()} {key.get_base64()}"


def _algorithms(key: paramiko.PKey) -> list[str]:
    """Host key algorithms that prove possession of `key` (RSA keys sign with SHA-2 variants)."""
    if isinstance(key, paramiko.RSAKey):
        return ["rsa-sha2-512", "rsa-sha2-256"]
    return [key.get_name()]


# -- client keys -------------------------------------------------------------------------------

class ClientKey(ABC):
    """Where the private key(s) used to log in come from."""

    @abstractmethod
    def load(self) -> list[paramiko.PKey]:
        """The candidate keys, tried in order. Raises `ClientKeyError` if there are none."""

    @abstractmethod
    def identity(self) -> str:
        """A non-secret string that tells this key source apart (used to share connections)."""


class KeyFile(ClientKey):
    """A private key file (OpenSSH or PEM format), optionally passphrase-protected."""

    def __init__(self, path: str, passphrase: str | None = None) -> None:
        self.path = os.path.expanduser(path)
        self._passphrase = passphrase
        self._key: paramiko.PKey | None = None

    def load(self) -> list[paramiko.PKey]:
        if self._key is None:
            self._key = self._read()
        return [self._key]

    def _read(self) -> paramiko.PKey:
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError as exc:
            raise ClientKeyError(f"private key file {self.path} does not exist") from exc
        except (OSError, ValueError) as exc:  # unreadable, or not text (UnicodeDecodeError)
            raise ClientKeyError(f"cannot read private key file {self.path}: "
                                 f"{getattr(exc, 'strerror', None) or 'not a text file'}") from None
        encrypted = encrypted_key(text)
        if encrypted and self._passphrase is None:
            raise ClientKeyError(f"private key {self.path} is encrypted: give its passphrase")
        try:
            passphrase = _passphrase_for(encrypted, self._passphrase)
            return paramiko.PKey.from_path(self.path, passphrase and passphrase.encode())
        except (paramiko.PasswordRequiredException, TypeError) as exc:
            # cryptography signals a missing passphrase with TypeError.
            raise ClientKeyError(f"private key {self.path} is encrypted: give its passphrase")\
                from exc
        except (paramiko.SSHException, ValueError, OSError) as exc:
            if _pkcs8(text):
                raise ClientKeyError(f"private key {self.path} is in PKCS#8 format, {PKCS8}")\
                    from None
            if encrypted:
                # paramiko reports a wrong passphrase as a parse error ("checkints do not
                # match", "no BEGIN/END delimiters"): the format said encrypted, so it is that.
                raise ClientKeyError(f"wrong passphrase for private key {self.path}: it does not "
                                     f"decrypt the key") from None
            raise ClientKeyError(f"cannot load private key {self.path}: not an Ed25519, ECDSA "
                                 f"or RSA private key ({exc})") from None

    def identity(self) -> str:
        return "file:" + fingerprint(self.load()[0])


class AgentKeys(ClientKey):
    """Every key the SSH agent at $SSH_AUTH_SOCK holds."""

    def load(self) -> list[paramiko.PKey]:
        keys = list(paramiko.Agent().get_keys())
        if not keys:
            where = os.environ.get("SSH_AUTH_SOCK")
            raise ClientKeyError(
                "the SSH agent holds no keys" + (f" (SSH_AUTH_SOCK={where})" if where else
                                                 " (SSH_AUTH_SOCK is not set: no agent runs)")
                + ": add one with `ssh-add`, or configure a key file or a secret key instead")
        return keys

    def identity(self) -> str:
        return f"agent:{os.environ.get('SSH_AUTH_SOCK', '')}"


class SecretKey(ClientKey):
    """A private key given as text (a Pulumi secret). Kept in memory only."""

    def __init__(self, text: str, passphrase: str | None = None) -> None:
        if not isinstance(text, str) or "PRIVATE KEY" not in text:
            raise ClientKeyError("the secret SSH key is not a private key: expected the text of "
                                 "a file such as ~/.ssh/id_ed25519 (-----BEGIN ... PRIVATE KEY)")
        self._text = text
        self._passphrase = passphrase
        self._key: paramiko.PKey | None = None

    def load(self) -> list[paramiko.PKey]:
        if self._key is None:
            self._key = _key_from_text(self._text, self._passphrase)
        return [self._key]

    def identity(self) -> str:
        return "secret:" + fingerprint(self.load()[0])

    @contextlib.contextmanager
    def temporary_file(self) -> Iterator[str]:
        """The key as a 0600 file in a private 0700 directory, removed when the block ends."""
        directory = tempfile.mkdtemp(prefix="vela-key-")
        path = os.path.join(directory, "id")
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(self._text if self._text.endswith("\n") else self._text + "\n")
            yield path
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def __repr__(self) -> str:
        return "SecretKey(<hidden>)"

    def __getstate__(self) -> dict:
        # Refuse to be pickled into a provider's state: the key would land there in plain text.
        raise TypeError("a SecretKey must never be pickled; pass the secret through config")


def _key_from_text(text: str, passphrase: str | None) -> paramiko.PKey:
    encrypted = encrypted_key(text)
    if encrypted and passphrase is None:
        raise ClientKeyError(ENCRYPTED_SECRET)
    errors = []
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), _passphrase_for(encrypted, passphrase))
        except (paramiko.PasswordRequiredException, TypeError) as exc:
            raise ClientKeyError(ENCRYPTED_SECRET) from exc
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    if _pkcs8(text):
        raise ClientKeyError(f"the secret SSH key is in PKCS#8 format, {PKCS8}")
    if encrypted:
        # Every loader fails on a wrong passphrase with its own parse error ("checkints do not
        # match", "Invalid key"): the key's format says it is encrypted, so that is the cause.
        raise ClientKeyError("wrong passphrase for the secret SSH key: "
                             "vela:sshPrivateKeyPassphrase does not decrypt it (set the right one "
                             "with `pulumi config set --secret vela:sshPrivateKeyPassphrase`)")
    raise ClientKeyError("cannot load the secret SSH key as Ed25519, ECDSA or RSA ("
                         + "; ".join(errors) + ")")


ENCRYPTED_SECRET = ("the secret SSH key is encrypted: give its passphrase with `pulumi config set "
                    "--secret vela:sshPrivateKeyPassphrase`")
_OPENSSH_BODY = re.compile(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE "
                           r"KEY-----", re.S)
_PEM_BODY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----",
                       re.S)
_OPENSSH_MAGIC = b"openssh-key-v1\x00"


def encrypted_key(text: str) -> bool | None:
    """Whether a private key's text is passphrase-protected, read from its format alone (no
    decryption): True or False for a well-formed OpenSSH or PEM key, None when the text is
    neither (then only loading it can tell what is wrong).

    OpenSSH (PROTOCOL.key): base64 of "openssh-key-v1\\0", then the cipher name as an SSH string
    (uint32 length, bytes): "none" for a key without passphrase. PEM: OpenSSL's traditional
    format says "Proc-Type: 4,ENCRYPTED"; PKCS#8 says "BEGIN ENCRYPTED PRIVATE KEY".
    """
    match = _OPENSSH_BODY.search(text)
    if match:
        try:
            blob = base64.b64decode("".join(match.group(1).split()), validate=True)
        except ValueError:
            return None
        if not blob.startswith(_OPENSSH_MAGIC) or len(blob) < len(_OPENSSH_MAGIC) + 4:
            return None
        start = len(_OPENSSH_MAGIC) + 4
        length = int.from_bytes(blob[start - 4:start], "big")
        return blob[start:start + length] != b"none"
    match = _PEM_BODY.search(text)
    if match:
        return match.group(1) == "ENCRYPTED " or "Proc-Type: 4,ENCRYPTED" in match.group(0)
    return None


# paramiko reads OpenSSH and OpenSSL's traditional PEM keys, not PKCS#8 ("BEGIN PRIVATE KEY",
# "BEGIN ENCRYPTED PRIVATE KEY"), whatever the passphrase: say so rather than "wrong passphrase".
PKCS8 = ("which vela cannot read: rewrite it in OpenSSH format with `ssh-keygen -p -f KEYFILE` "
         "(it keeps or changes the passphrase)")


def _pkcs8(text: str) -> bool:
    match = _PEM_BODY.search(text)
    return bool(match) and match.group(1) in {"", "ENCRYPTED "}


def _passphrase_for(encrypted: bool | None, passphrase: str | None) -> str | None:
    """The passphrase to hand to the loaders: none for a key known to be unencrypted, since
    cryptography refuses a passphrase for one (TypeError, which reads as "encrypted")."""
    return None if encrypted is False else passphrase


# -- host keys ---------------------------------------------------------------------------------

# The first word of a public key line: ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa,
# sk-ssh-ed25519@openssh.com. Only a word of this form is ever repeated in a message.
_KEY_TYPE = re.compile(r"^(?:ssh|ecdsa|sk)-[a-z0-9@.-]{1,60}$")
# "openssh-key-v1" in base64: how the body of an OpenSSH private key begins, armour or not.
_OPENSSH_PRIVATE_BODY = "b3BlbnNzaC1rZXktdjE"


def looks_private(text: str) -> bool:
    """Whether text holds a private key, or the body of one without its armour lines."""
    return "PRIVATE KEY" in text or _OPENSSH_PRIVATE_BODY in text


def parse_public_key(line: str) -> paramiko.PKey:
    """Parse one OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`).

    Messages never repeat the value, only its key type: what is pasted into a public key field
    by mistake is often the private key, and a message ends up in terminals and CI logs.
    """
    if not isinstance(line, str):
        raise InvalidValue("an SSH public key is one line of text, such as 'ssh-ed25519 AAAAC3..'")
    if looks_private(line):
        raise InvalidValue(
            "this is a private key, not an SSH public key (it is not repeated here): give the "
            "public key line instead (the .pub file; `ssh-keygen -y -f KEYFILE` prints it). "
            "Remove the private key from the stack config (`pulumi config rm`), and replace "
            "the key if the config was shared")
    parts = line.split()
    if len(parts) < 2 or not _KEY_TYPE.match(parts[0]):
        raise InvalidValue(
            "not an SSH public key: expected one line '<type> <base64> [comment]', such as "
            "'ssh-ed25519 AAAAC3Nza...' (the .pub file of the key)")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise InvalidValue(f"not a valid SSH public key: what follows {parts[0]!r} is not "
                           f"base64 (was the line cut or wrapped?)") from None
    try:
        key = paramiko.PKey.from_type_string(parts[0], blob)
    except paramiko.UnknownKeyType:
        raise InvalidValue(f"not a valid SSH public key: vela reads ssh-ed25519, "
                           f"ecdsa-sha2-nistp256/384/521 and ssh-rsa keys, not {parts[0]!r}")\
            from None
    except Exception:  # noqa: BLE001 - paramiko raises several unrelated types for bad blobs
        raise InvalidValue(f"not a valid SSH public key: its data is not a whole {parts[0]} key "
                           f"(was the line cut, or its type changed?)") from None
    if key.asbytes() != blob:
        # paramiko pads a short Ed25519 blob with zeros: a line cut short would pin another key.
        raise InvalidValue(f"not a valid SSH public key: its data is not a whole {parts[0]} key "
                           f"(was the line cut, or its type changed?)")
    return key


def known_hosts_name(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts."""
    bracketed = f"[{address}]" if ":" in address or port != 22 else address
    return bracketed if port == 22 else f"{bracketed}:{port}"


class HostKeyCheck:
    """The keys a host may present: pinned keys, else the matching known_hosts entries."""

    def __init__(self, pinned: Sequence[str] = (), known_hosts: str | None = None) -> None:
        self.pinned = [parse_public_key(line) for line in pinned]
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")

    def expected(self, address: str, port: int) -> list[paramiko.PKey]:
        if self.pinned:
            return self.pinned
        table = paramiko.HostKeys()
        if os.path.exists(self.known_hosts):
            try:
                table.load(self.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise InvalidValue(f"cannot read known_hosts file {self.known_hosts}: {exc}")\
                    from exc
        entry = table.lookup(known_hosts_name(address, port))
        return list(entry.values()) if entry else []

    @staticmethod
    def algorithms(expected: Sequence[paramiko.PKey]) -> list[str]:
        """Host key algorithms to offer, so the server proves the key we know (not another)."""
        names: list[str] = []
        for key in expected:
            names.extend(name for name in _algorithms(key) if name not in names)
        return names

    def source(self) -> str:
        return "pinned" if self.pinned else f"in {self.known_hosts}"

    def verify(self, host: str, address: str, port: int, offered: paramiko.PKey,
               expected: Sequence[paramiko.PKey]) -> None:
        if any(offered.asbytes() == key.asbytes() for key in expected):
            return
        pin = public_line(offered)
        if not expected:
            raise UnknownHostKey(host, (
                f"refusing to connect: the host key of {known_hosts_name(address, port)} is not "
                f"trusted. It offered {offered.get_name()} {fingerprint(offered)}. Check that "
                f"fingerprint out of band (on the host: `ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{_file_stem(offered)}_key.pub`), then pin it by setting the "
                f"node's host key to '{pin}' (or add '{known_hosts_name(address, port)} {pin}' "
                f"to {self.known_hosts}). Nothing was run."))
        known = ", ".join(f"{key.get_name()} {fingerprint(key)}" for key in expected)
        raise HostKeyMismatch(host, (
            f"HOST KEY CHANGED, refusing to connect: {known_hosts_name(address, port)} offered "
            f"{offered.get_name()} {fingerprint(offered)}, but the key {self.source()} is {known}. "
            f"Either the host was reinstalled or someone is intercepting the connection. Only if "
            f"you have verified a reinstall, replace the pinned key with '{pin}'. Nothing was "
            f"run."))


def _file_stem(key: paramiko.PKey) -> str:
    name = key.get_name()
    if "ed25519" in name:
        return "ed25519"
    if "ecdsa" in name:
        return "ecdsa"
    return "rsa"
