"""Progress lines and error first lines on their own (providers/common/progress.py,
providers/errors.py); the converge loop's lines are in test_converge.py, the way they reach
`pulumi up` in tests/integration/test_provider_progress.py."""

from __future__ import annotations

import pytest

from providers.common import progress
from providers.errors import ConnectionLost, HostUnreachable, SriovPoolError
from providers.host import reboot
from tests.unit.test_lab_boot_wait import REFUSED, ScriptedHost


def test_a_long_wait_for_a_boot_says_it_still_waits_and_why(monkeypatch):
    monkeypatch.setattr(reboot, "PROGRESS_EVERY", 0.0)  # a note at every poll, not every 30 s
    lines: list[str] = []
    host = ScriptedHost(["boot-a", "boot-a", REFUSED, "boot-b"])
    assert reboot.reboot_and_wait(host, 600, poll=0, progress=lines.append) == "boot-b"
    assert [line.split(" after ")[0] for line in lines] == ["node-7: not back"] * 2 + \
        ["node-7: SSH ready"]
    assert lines[0].endswith(" of 600 s (it still answers from the old boot)")
    assert lines[1].endswith(" of 600 s (cannot reach 10.0.0.7:22: Connection refused. "
                             "Check ...)")


def test_an_error_leaving_an_operation_names_host_call_and_step_once():
    lines: list[str] = []
    with pytest.raises(SriovPoolError) as caught, \
            progress.operation("10.0.0.7:22", "SriovPool", "delete", sink=lines.append):
        progress.report("facts read", "3 PCI functions")
        progress.begin("reading the host")
        raise SriovPoolError("10.0.0.7:22: the PF is gone: check the NIC\n - detail")
    assert lines[0].startswith("10.0.0.7:22: SriovPool delete: facts read: 3 PCI functions [")
    first, _, rest = str(caught.value).partition("\n")
    assert first.startswith("10.0.0.7:22: SriovPool delete failed while reading the host (")
    assert first.endswith(" s in): the PF is gone: check the NIC")  # the host named once
    assert rest == " - detail"


def test_the_fix_is_added_only_where_the_message_cannot_say_it():
    dropped = ConnectionLost("n1", "the connection dropped while running 'x'")
    refused = HostUnreachable("n1", "cannot reach n1:22: refused. Check that sshd runs")
    for error in (dropped, refused):
        error.during = ("n1", "HostTuning update failed while applying 2 change(s), round 1 "
                              "(3.0 s in)")
    assert str(dropped) == ("n1: HostTuning update failed while applying 2 change(s), round 1 "
                            "(3.0 s in): the connection dropped while running 'x'; run `pulumi "
                            "up` again once the host answers: it reads the host first, so "
                            "nothing is applied twice")
    assert str(refused).endswith("(3.0 s in): cannot reach n1:22: refused. Check that sshd "
                                 "runs")


def test_listing_keeps_a_line_short():
    assert progress.listing(["a", "b"]) == "a; b"
    assert progress.listing(list("abcdef"), 2) == "a; b; and 4 more"
