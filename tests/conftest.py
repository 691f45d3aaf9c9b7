"""Shared fixtures: fake host roots, a real sshd on loopback, SSH hosts pointed at it, the
session's lab host; and a failure's report printed as soon as the test fails."""

from __future__ import annotations

import pytest

import providers  # noqa: F401  (installs the SDK workaround before any resource is built)
from providers.host import KeyFile, LocalHost, SshHost, close_all_connections
from tests.lab.conftest import booted_lab, console_tails
from tests.support.hgx import hgx_a100
from tests.support.sshd import Sshd

_config: pytest.Config | None = None


def pytest_configure(config):
    global _config
    _config = config


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    """A failure's report at once, not only in the summary at the end: a run stopped part of
    the way (CI's time limit) still shows why each test that failed before it failed."""
    reporter = _config and _config.pluginmanager.get_plugin("terminalreporter")
    if not report.failed or not reporter:
        return
    reporter.write("\n")
    reporter.write_sep("!", f"{report.nodeid} failed ({report.when}); its report follows")
    reporter.write_line(str(report.longrepr)[-6000:])
    consoles = console_tails() if "slow" in report.keywords else ""
    if consoles:  # a lab test: the hosts' consoles, while the hosts are still there
        reporter.write_line(consoles)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """One lab host shared by every test that can start from whatever state the host is in and
    leaves it as it found it (each takes its own snapshot first and checks against it): booted
    when first needed, torn down at the end of the session, one host boot where each module
    had its own. In pytest's order: the dev stack (tests/integration/test_pulumi_cli.py), the
    lab's own tests (tests/lab/test_lab_host.py), then test_tuning_pools_and_guests_lab.py,
    its last user (it leaves intel_iommu=off in GRUB's defaults)."""
    with booted_lab(tmp_path_factory) as lab:
        yield lab


@pytest.fixture(scope="session")
def hgx(tmp_path_factory):
    """The HGX A100 fixture written once per session: (root path, layout)."""
    host, layout = hgx_a100(nic_vfs=2)
    root = host.write(tmp_path_factory.mktemp("hgx-root"))
    return root, layout


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    close_all_connections()
    server.stop()


@pytest.fixture
def ssh_host(sshd):
    """A factory of SshHost objects aimed at the loopback sshd (pinned host key by default)."""

    def make(**overrides) -> SshHost:
        options = dict(port=sshd.port, user=sshd.user,
                       client_key=KeyFile(str(sshd.client_key_path)),
                       pinned_host_keys=[sshd.host_key], connect_timeout=5.0)
        options.update(overrides)
        return SshHost("127.0.0.1", **options)

    yield make
    close_all_connections()


@pytest.fixture
def local_host(tmp_path):
    return LocalHost(str(tmp_path))
