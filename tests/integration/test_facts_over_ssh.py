"""Facts gathered over SSH equal facts gathered locally, in exactly one remote command."""

from __future__ import annotations

from providers.facts import gather_facts
from providers.host import LocalHost


def test_facts_over_ssh_equal_local_facts_in_one_exec(sshd, ssh_host, hgx):
    root, layout = hgx
    local = gather_facts(LocalHost(str(root)))
    host = ssh_host(sysroot=str(root))
    host.run(["true"])  # connect first, so the count below sees only the gathering
    sessions, execs = sshd.sessions(), host.connection.execs
    remote = gather_facts(host)
    assert sshd.sessions() - sessions == 1  # as the server saw it
    assert host.connection.execs - execs == 1  # as the client sent it
    assert remote == local
    assert [gpu for gpu in layout.gpus if gpu in remote.pci] == layout.gpus
    assert len(remote.pci) == len(local.pci) == 75  # 59 functions + 2 VFs on each of 8 PFs


def test_facts_of_this_machine_over_ssh_match_local(sshd, ssh_host):
    """The real kernel's sysfs, not a fake tree: whatever this machine is, both paths agree."""
    assert gather_facts(ssh_host()) == gather_facts(LocalHost())
