"""Every shell-bound value is validated; the messages say how to fix it."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import AfterValidator, BaseModel, ValidationError

from providers.errors import InvalidValue
from providers.validate import (
    PciAddressStr,
    absolute_path,
    host_address,
    interface_name,
    pci_address,
    port_number,
    user_name,
)

HOSTILE = ["eth0; reboot", "$(reboot)", "`id`", "a b", "a\nb", "x|y", "x&y", "x>y", "'", '"',
           "../../etc", "-rf", ""]


def test_pci_address_canonical_forms():
    assert pci_address("3b:00.0") == "0000:3b:00.0"
    assert pci_address("0000:3B:00.1") == "0000:3b:00.1"
    assert pci_address("10000:01:1f.7") == "10000:01:1f.7"  # VMD domains


@pytest.mark.parametrize("value", HOSTILE + ["0000:3b:20.0", "0000:3b:00.8", "3b:0.0",
                                             "0000:3b:00.0;ls"])
def test_pci_address_rejects(value):
    with pytest.raises(InvalidValue, match="lspci -D"):
        pci_address(value)


@pytest.mark.parametrize("value", HOSTILE + ["averyveryverylongname", "eth:0", "eth/0"])
def test_interface_name_rejects(value):
    with pytest.raises(InvalidValue, match="interface name"):
        interface_name(value)


def test_interface_name_accepts_udev_names():
    for name in ["eth0", "ens1f0np0", "enp27s0f1v3", "ib0", "bond0.100"]:
        assert interface_name(name) == name


@pytest.mark.parametrize("value", ["/etc/default/grub", "/sys/bus/pci/devices/0000:3b:00.0/config"])
def test_paths_accepted(value):
    assert absolute_path(value) == value


@pytest.mark.parametrize("value", ["relative/path", "/etc/../shadow", "/tmp/a b", "/tmp/$(x)",
                                   "/tmp/`x`", "/tmp/a;b", "/tmp/./x", ""])
def test_paths_rejected(value):
    with pytest.raises(InvalidValue, match="absolute path"):
        absolute_path(value)


def test_hosts_users_ports():
    assert host_address("127.0.0.1") == "127.0.0.1"
    assert host_address("[::1]") == "::1"
    assert host_address("Node-01.Rack3.example") == "node-01.rack3.example"
    assert user_name("root") == "root"
    assert port_number(22.0) == 22  # Pulumi sends numbers as floats
    for bad in ["host name", "-oProxyCommand=x", "a;b"]:
        with pytest.raises(InvalidValue):
            host_address(bad)
    for bad in ["Root", "a b", "-x"]:
        with pytest.raises(InvalidValue):
            user_name(bad)
    for bad in [0, 65536, 22.5, "ssh"]:
        with pytest.raises(InvalidValue, match="TCP port"):
            port_number(bad)


def test_pydantic_fields_report_the_field_and_the_fix():
    class Device(BaseModel):
        address: PciAddressStr
        interface: Annotated[str, AfterValidator(interface_name)]

    assert Device(address="3b:00.0", interface="eth0").address == "0000:3b:00.0"
    with pytest.raises(ValidationError) as caught:
        Device(address="3b:00.0", interface="eth0;reboot")
    message = str(caught.value)
    assert "interface" in message and "at most 15" in message
