"""The local host: commands, deadlines and files behave as they do over SSH."""

from __future__ import annotations

import os
import time

import pytest

from providers.errors import CommandFailed, CommandTimeout, InvalidValue
from providers.host import LocalHost


def test_run_returns_output_and_status(local_host):
    result = local_host.run(["sh", "-c", "echo out; echo err >&2; exit 0"])
    assert result.text == "out\n" and result.error_text == "err\n" and result.exit_code == 0


def test_failure_carries_host_command_status_and_stderr(local_host):
    with pytest.raises(CommandFailed) as caught:
        local_host.run(["sh", "-c", "echo 'no such device' >&2; exit 3"])
    error = caught.value
    assert error.exit_code == 3 and "no such device" in error.stderr
    assert local_host.name in str(error) and "exited with status 3" in str(error)
    assert "sh -c" in str(error)
    assert local_host.run(["false"], check=False).exit_code == 1


def test_timeout_kills_the_command_and_its_children(local_host, tmp_path):
    marker = tmp_path / "should-not-exist"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 1 s"):
        local_host.run(["sh", "-c", f"(sleep 2; touch {marker}) & sleep 2; touch {marker}"],
                       timeout=1)
    assert time.monotonic() - started < 4
    time.sleep(2.5)
    assert not marker.exists()


def test_shell_metacharacters_are_data(local_host, tmp_path):
    hostile = f"$(touch {tmp_path}/a); `touch {tmp_path}/b`; touch {tmp_path}/c | true && x"
    assert local_host.run(["printf", "%s", hostile]).text == hostile
    assert sorted(os.listdir(tmp_path)) == []


def test_files_live_under_the_sysroot(local_host, tmp_path):
    local_host.write_file("/etc/vela/test.conf", b"a=1\n", mode=0o600)
    path = tmp_path / "etc/vela/test.conf"
    assert path.read_bytes() == b"a=1\n" and (path.stat().st_mode & 0o777) == 0o600
    assert local_host.read_file("/etc/vela/test.conf") == b"a=1\n"
    local_host.write_file("/etc/vela/test.conf", b"a=2\n")
    assert path.read_bytes() == b"a=2\n"
    assert sorted(os.listdir(path.parent)) == ["test.conf"]  # no temp file left behind


def test_plain_write_for_sysfs_attributes(local_host, tmp_path):
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys/sriov_numvfs").write_text("0\n")
    local_host.write_file("/sys/sriov_numvfs", b"4\n", atomic=False)
    assert (tmp_path / "sys/sriov_numvfs").read_text() == "4\n"


def test_missing_file_is_a_clear_failure(local_host):
    with pytest.raises(CommandFailed, match="No such file"):
        local_host.read_file("/nope")


@pytest.mark.parametrize("path", ["relative", "/a/../b", "/a b", "/$(id)", "/x;y"])
def test_unsafe_paths_are_refused_before_running_anything(local_host, path):
    with pytest.raises(InvalidValue):
        local_host.read_file(path)


def test_nul_bytes_and_bad_timeouts_are_refused():
    host = LocalHost()
    with pytest.raises(InvalidValue, match="NUL"):
        host.run(["echo", "a\0b"])
    with pytest.raises(InvalidValue, match="positive"):
        host.run(["true"], timeout=0)
