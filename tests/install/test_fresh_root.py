"""scripts/setup on a Debian 12 root where nothing is installed, then the fast tests in it.

CI runs on a machine where earlier work installed things, so a green CI can hide a missing
install step. This test unpacks a minbase bookworm root (no Python, no QEMU, no compiler: see
tests/support/fresh_root.py), copies the project in as `git` would check it out, and runs:
  1. scripts/setup: apt, QEMU from backports, the virtualenv, the Pulumi CLI and the lab image.
     The CLI comes from this machine's cache of the pinned build (bound in read-only; building it
     cold is 4 minutes more, measured in README): what the root proves is that setup links it and
     its provider plugin into .venv/bin and that it runs there.
  2. scripts/setup again: nothing left to do, and quickly.
  3. scripts/test in the root: every test module imports with only what setup installed
     (collection), and the fast tests that run each program setup installed pass there
     (INSTALLED_PROGRAMS): sshd on loopback with the facts script on the root's sh, the
     provider server, the real CLI with the vela program, the linters, strace, systemd-analyze,
     libvirt's test driver, Graphviz, iperf3 and ip. The rest runs the same programs again, or
     is pure Python over fixtures, which the root's installs do not change; it runs outside the
     root, in the same suite (the engine's rules alone took 85 s in the root).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from components.runner import PROJECT_ROOT
from tests.support.fresh_root import chroot_run, unpack

pytestmark = pytest.mark.slow
INSIDE = "/opt/vela"  # where the project is checked out in the root
# Fast tests that run what scripts/setup installs, beyond the Python packages that every
# module imports: sshd and the root's sh (ssh_host, facts_over_ssh), the Pulumi CLI with the
# vela program and the provider server (pulumi_cli, provider_harness), ruff and shellcheck
# (linters), strace (tracing, the fake kernel's writes), systemd-analyze (boot units, the
# guest's unit), libvirt's own library (domain XML through its test driver), Graphviz
# (topology pictures), iperf3 and ip (the acceptance benchmark's plan).
INSTALLED_PROGRAMS = [
    *(f"tests/integration/test_{name}.py" for name in [
        "ssh_host", "facts_over_ssh", "pulumi_cli", "provider_harness"]),
    *(f"tests/unit/test_{name}.py" for name in [
        "linters", "tracing", "hugepage_args", "boot_units", "gpu_vm_guest", "gpu_vm_xml",
        "topology", "topology_stack", "acceptance"])]


def _checkout(root: Path) -> None:
    """The project's files as a clone has them: tracked and not-ignored files, no .venv."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_ROOT, check=True, capture_output=True).stdout
    target = root / INSIDE.lstrip("/")
    for name in filter(None, listed.decode().split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())
            (target / name).chmod(source.stat().st_mode & 0o777)


def _cli_cache() -> str:
    """This machine's cache of the pinned CLI build (scripts/setup made it before the tests)."""
    return subprocess.run([str(PROJECT_ROOT / "scripts" / "pulumi-cli"), "cache"], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def root(tmp_path):
    """A new root, removed afterwards (several GB once set up); the logs stay in tmp_path. Its
    mounts lived in the commands' own mount namespaces, so nothing of the host is under it."""
    root = unpack(tmp_path)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_setup_then_fast_tests_on_a_fresh_debian_root(root, tmp_path):
    assert not (root / "usr/bin/python3").exists()  # really nothing there
    _checkout(root)
    cache = _cli_cache()
    env = {"VELA_PULUMI_CACHE": cache}
    log = tmp_path / "setup.log"

    # A failing step names its stage and command, and leaves no policy-rc.d behind. The stand-in
    # apt-get fails as apt-get does on any error, e.g. an unreachable mirror: apt-get(8), "EXIT
    # CODES: apt-get returns zero on normal operation, decimal 100 on error".
    failing = chroot_run(root, f"""mkdir -p /tmp/stub && printf '#!/bin/sh\\nexit 100\\n' \\
        > /tmp/stub/apt-get && chmod +x /tmp/stub/apt-get
        cd {INSIDE} && PATH=/tmp/stub:$PATH scripts/setup""")
    assert failing.returncode == 100, failing.stdout
    assert 'setup: stage "apt" failed (exit 100) running: env DEBIAN_FRONTEND=noninteractive ' \
           'apt-get update -q' in failing.stdout, failing.stdout
    assert not (root / "usr/sbin/policy-rc.d").exists()

    started = time.monotonic()
    setup = chroot_run(root, f"cd {INSIDE} && scripts/setup", env=env, binds=[cache],
                       log_file=log)
    first = time.monotonic() - started
    text = log.read_text()
    print(text[-4000:])
    assert setup.returncode == 0, text[-4000:]
    for stage in ["apt", "backports", "venv", "cli", "lab-image"]:
        assert f"setup [{stage}]:" in text
    assert "QEMU emulator version 10" in text
    assert "pulumi-cli: v3.274.1 in .venv/bin" in text
    assert "lab image: built in" in text

    again = chroot_run(root, f"cd {INSIDE} && scripts/setup", env=env, binds=[cache])
    assert again.returncode == 0, again.stdout
    assert "installing" not in again.stdout and "building" not in again.stdout
    print(f"setup in a fresh root: {first:.0f} s; again: {again.stdout.splitlines()[-1]}")

    # Without Go and without a cached build, the CLI step says how to get the CLI.
    no_go = chroot_run(root, f"cd {INSIDE} && VELA_PULUMI_CACHE=/tmp/empty scripts/pulumi-cli "
                             "install")
    assert no_go.returncode == 3, no_go.stdout
    assert "Go is not installed" in no_go.stdout and "official Pulumi CLI" in no_go.stdout

    collected = chroot_run(root, f"cd {INSIDE} && scripts/test --collect-only -q "
                                 "-p no:cacheprovider", env=env, binds=[cache])
    assert collected.returncode == 0, collected.stdout[-6000:]
    assert "error" not in collected.stdout.splitlines()[-1], collected.stdout[-6000:]
    tests = chroot_run(root, f"cd {INSIDE} && scripts/test --fast -q -p no:cacheprovider "
                             f"{' '.join(INSTALLED_PROGRAMS)}",
                       env=env, binds=[cache], log_file=tmp_path / "test.log")
    output = (tmp_path / "test.log").read_text()
    print(output[-3000:])
    assert tests.returncode == 0, output[-6000:]
    assert " passed" in output.splitlines()[-1] and "skipped" not in output.splitlines()[-1]
