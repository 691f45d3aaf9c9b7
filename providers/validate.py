"""Validators for every value that can reach a remote shell or a sysfs path.

Each validator returns the value in its canonical form or raises `InvalidValue` with a message
that names the value, says what is wrong and what a valid one looks like. The same functions back
the pydantic field types (`PciAddressStr`, ...) so that inputs are checked before anything is
touched. Quoting (`providers.common.shell.quote`, the one quoting function) is the second line
of defence; these patterns are the first.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator

from .errors import InvalidValue

# Domain (4+ hex digits: VMD domains have 5), bus, device (5 bits), function (3 bits).
_PCI_ADDRESS = re.compile(r"^(?:(?P<domain>[0-9a-f]{4,8}):)?(?P<bus>[0-9a-f]{2}):"
                          r"(?P<device>[0-9a-f]{2})\.(?P<function>[0-7])$")
# Linux accepts most bytes in interface names (not '/', ':' or whitespace, at most 15 bytes);
# we accept the portable subset that every udev naming scheme produces.
_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9_./:@+,=-]+$")


def pci_address(value: str, what: str = "PCI address") -> str:
    """Canonical `dddd:bb:dd.f`, lower case; the short form `bb:dd.f` means domain 0000."""
    text = str(value).strip().lower()
    match = _PCI_ADDRESS.match(text)
    if not match or int(match["device"], 16) > 0x1F:
        raise InvalidValue(
            f"{value!r} is not a valid {what}: expected domain:bus:device.function in hex, "
            f"for example 0000:3b:00.0 (device 00-1f, function 0-7), as `lspci -D` prints it")
    return f"{match['domain'] or '0000'}:{match['bus']}:{match['device']}.{match['function']}"


def interface_name(value: str) -> str:
    """A network interface name as udev names them (eth0, ens1f0np0, enp59s0f1v3)."""
    if not isinstance(value, str) or not _INTERFACE.match(value) or value in {".", ".."}:
        raise InvalidValue(
            f"{value!r} is not a valid network interface name: use at most 15 letters, digits, "
            f"'_', '.' or '-', starting with a letter or digit (as `ip -br link` lists them)")
    return value


def user_name(value: str) -> str:
    """A POSIX login name."""
    if not isinstance(value, str) or not _USER.match(value):
        raise InvalidValue(
            f"{value!r} is not a valid user name: use lower-case letters, digits, '_' or '-', "
            f"starting with a letter or '_', at most 32 characters (for example 'root')")
    return value


def host_address(value: str) -> str:
    """An IPv4/IPv6 address or a DNS name."""
    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise InvalidValue(
            f"{value!r} is not a valid host address: use an IPv4 or IPv6 address or a DNS name "
            f"(letters, digits, '-' and '.')")
    return text.lower()


def port_number(value: int | float | str) -> int:
    """A TCP port; accepts the floats Pulumi puts on the wire (22.0)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number.is_integer() or not 1 <= number <= 65535:
        raise InvalidValue(f"{value!r} is not a valid TCP port: use a whole number 1-65535")
    return int(number)


def absolute_path(value: str, what: str = "path") -> str:
    """An absolute, normalised path made of plain characters (no '..', no spaces, no quotes)."""
    if (not isinstance(value, str) or not value.startswith("/") or not _PATH_CHARS.match(value)
            or any(part in {".", ".."} for part in value.split("/"))):
        raise InvalidValue(
            f"{value!r} is not a valid {what}: use an absolute path of letters, digits and "
            f"'_./:@+,=-', without '.' or '..' components, for example /etc/default/grub")
    return "/" + "/".join(part for part in value.split("/") if part)


PciAddressStr = Annotated[str, AfterValidator(pci_address)]
UserName = Annotated[str, AfterValidator(user_name)]
HostAddress = Annotated[str, AfterValidator(host_address)]
