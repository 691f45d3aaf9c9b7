"""Shared fixtures: fake host roots, a real sshd on loopback, SSH hosts pointed at it."""

from __future__ import annotations

import pytest

import providers  # noqa: F401  (installs the SDK workaround before any resource is built)
from providers.host import KeyFile, LocalHost, SshHost, close_all_connections
from tests.support.hgx import hgx_a100
from tests.support.sshd import Sshd


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
