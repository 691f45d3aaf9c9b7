"""How to reach a host over SSH, as every resource's inputs and the inventory spell it.

`SshTarget` is the validated connection part of a resource's inputs (address, port, user,
pinned host key). The private key is deliberately not here: it comes from provider
configuration or a secret, never from inputs that are stored in state.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from ..common.inputs import Inputs
from ..errors import InvalidValue
from ..validate import HostAddress, UserName, port_number
from .keys import ClientKey, parse_public_key
from .ssh import SshHost


def _public_key_line(value: str) -> str:
    try:
        parse_public_key(value)
    except InvalidValue as exc:
        # Where a host key comes from: the host itself, not the network (which it would verify).
        raise InvalidValue(f"{exc}; a hostKey is the host's own public key line: on the host's "
                           f"console, `cat /etc/ssh/ssh_host_ed25519_key.pub`") from None
    return " ".join(value.split()[:2])  # drop the comment: it is not part of the key


Port = Annotated[int, BeforeValidator(port_number)]
PublicKeyLine = Annotated[str, AfterValidator(_public_key_line)]


class SshTarget(Inputs):
    address: HostAddress
    port: Port = 22
    user: UserName = "root"
    host_key: PublicKeyLine

    def connect(self, client_key: ClientKey, *, sysroot: str = "/",
                name: str | None = None, **options: Any) -> SshHost:
        """An `SshHost` for this target (connections are pooled; this opens none yet)."""
        return SshHost(self.address, port=self.port, user=self.user, client_key=client_key,
                       pinned_host_keys=[self.host_key], sysroot=sysroot, name=name, **options)
