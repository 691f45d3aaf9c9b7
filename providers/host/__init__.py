"""Host access: run commands and read/write files on a hypervisor host, over SSH or locally.

`Host` is the whole interface providers see; `SshHost` and `LocalHost` are its two transports.
`reboot` reboots a host and waits for its new boot (HostTuning and the lab both wait with it).
"""

from .base import CommandResult, Host, shell_command
from .keys import AgentKeys, ClientKey, HostKeyCheck, KeyFile, SecretKey, fingerprint
from .local import LocalHost
from .ssh import SshHost, close_all_connections

__all__ = ["AgentKeys", "ClientKey", "CommandResult", "Host", "HostKeyCheck", "KeyFile",
           "LocalHost", "SecretKey", "SshHost", "close_all_connections", "fingerprint",
           "shell_command"]
