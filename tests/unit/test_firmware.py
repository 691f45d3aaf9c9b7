"""mlxconfig/mstconfig output parsing (recorded real outputs) and the tool's stand-in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from providers.host_tuning.firmware import (
    FirmwareOutputError,
    parse_query,
    parse_value,
    recipe_settings,
    set_arguments,
)
from tests.support.mlxconfig_set import parse_set
from tests.support.recorded import recorded

STANDIN = Path(__file__).resolve().parents[1] / "support" / "standins" / "mstconfig-standin"


def test_recorded_abbreviated_connectx4_query():
    device, = parse_query(recorded("mlxconfig_query/cx4-lenovo-abbreviated-terrencemiao.txt"))
    assert device.device_type == "ConnectX4" and device.name == "00KH925_Ax"
    assert device.device == "/dev/mst/mt4115_pciconf0"
    assert {name: p.next_boot for name, p in device.params.items()} == \
        {"LINK_TYPE_P1": 2, "SRIOV_EN": 1, "NUM_OF_VFS": 8}
    assert device.truncated  # the author cut it: absent parameters are unknown, not absent


@pytest.mark.parametrize("name", ["cx5-mstconfig-sriov-ib-sriov-cni.txt",
                                  "cx7-aws-num-of-vfs-set.txt"])
def test_recorded_set_dialogs(name):
    text = recorded(f"mlxconfig_set/{name}")
    result = parse_set(text)
    assert result.applied and result.reboot_needed and result.errors == []
    device, = parse_query(text)  # the same table layout, with Next Boot and New columns
    assert device.params["NUM_OF_VFS"].next_boot in (8, 127)
    assert device.device_type in ("ConnectX5", "ConnectX7")


def test_recorded_unsupported_parameter_error():
    text = recorded("mlxconfig_set/error-param-not-supported-cx4lx.txt")
    result = parse_set(text)
    assert not result.applied and result.errors == [
        "-E- The Device doesn't support MPFS_UC_LOOPBACK_DISABLE_P1 parameter"]


def test_values_and_commands():
    assert [parse_value(v) for v in ["True(1)", "per_mkey(0)", "44", "0x10", "N/A"]] == \
        [1, 0, 44, 16, None]
    assert set_arguments({"NUM_OF_VFS": 8, "SRIOV_EN": 1, "ADVANCED_PCI_SETTINGS": 1}) == \
        ["ADVANCED_PCI_SETTINGS=1", "SRIOV_EN=1", "NUM_OF_VFS=8"]  # recipe order
    assert recipe_settings("vm", 8)["ATS_ENABLED"] == 1
    assert recipe_settings("baremetal", 8)["ATS_ENABLED"] == 0
    assert recipe_settings("vm", 0)["SRIOV_EN"] == 0


class StandIn:
    """Runs the stand-in locally against a fake root, with a boot id we can change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sys/bus/pci/devices/0000:3b:00.0").mkdir(parents=True)
        (root / "proc/sys/kernel/random").mkdir(parents=True)
        self.reboot()

    def reboot(self) -> None:
        boot = self.root / "proc/sys/kernel/random/boot_id"
        boot.write_text(os.urandom(8).hex() + "\n")

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "MSTCONFIG_STANDIN_ROOT": str(self.root),
               "MSTCONFIG_STANDIN_STATE": str(self.root / "state")}
        return subprocess.run([str(STANDIN), *args], env=env, capture_output=True, text=True)

    def query(self):
        result = self("-d", "0000:3b:00.0", "-e", "q")
        assert result.returncode == 0, result.stdout
        device, = parse_query(result.stdout)
        return device.params


def test_standin_behaves_like_the_tool(tmp_path):
    tool = StandIn(tmp_path)
    params = tool.query()
    assert "MAX_ACC_OUT_READ" not in params  # hidden until ADVANCED_PCI_SETTINGS is active
    assert params["SRIOV_EN"].current == 0 and not params["SRIOV_EN"].pending
    refused = tool("-d", "0000:3b:00.0", "-y", "set", "MAX_ACC_OUT_READ=44")
    assert refused.returncode != 0 and parse_set(refused.stdout).errors
    done = tool("-d", "0000:3b:00.0", "-y", "set", *set_arguments(
        {"ADVANCED_PCI_SETTINGS": 1, "SRIOV_EN": 1, "NUM_OF_VFS": 8}))
    assert parse_set(done.stdout).applied and parse_set(done.stdout).reboot_needed
    params = tool.query()
    assert params["SRIOV_EN"].next_boot == 1 and params["SRIOV_EN"].current == 0
    assert params["SRIOV_EN"].pending and params["SRIOV_EN"].modified
    assert "MAX_ACC_OUT_READ" not in params  # not before a reboot
    tool.reboot()
    params = tool.query()
    assert params["ADVANCED_PCI_SETTINGS"].current == 1 and not params["SRIOV_EN"].pending
    assert params["MAX_ACC_OUT_READ"].current == 0
    assert tool("-d", "0000:3b:00.0", "-y", "set", "MAX_ACC_OUT_READ=44").returncode == 0
    tool.reboot()
    assert tool.query()["MAX_ACC_OUT_READ"].current == 44


def test_standin_errors_like_the_tool(tmp_path):
    tool = StandIn(tmp_path)
    missing = tool("-d", "0000:99:00.0", "q")
    assert missing.returncode != 0 and "-E- Failed to open device" in missing.stdout
    unknown = tool("-d", "0000:3b:00.0", "-y", "set", "NO_SUCH_PARAM=1")
    assert parse_set(unknown.stdout).errors == ["-E- The Device doesn't support NO_SUCH_PARAM "
                                                "parameter"]
    with pytest.raises(FirmwareOutputError):
        parse_query(tool("-d", "0000:3b:00.0", "q", "NO_SUCH_PARAM").stdout)
