"""`vela_vm_define` when virsh refuses the definition: the XML it tried stays on the host, in
/var/lib/vela/failed/NAME.xml, and the error's first line names that path; the placement lock
is released; a later define that succeeds removes it. The race path (exit 75) is unchanged
(tests/unit/test_gpu_vm_placement.py). Run by the product's shell library on a fake root
through a real LocalHost, with the virsh stand-in of the placement test (a define of a name
that exists fails, as libvirt's does for another UUID)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from providers.common import shell
from providers.errors import CommandFailed
from providers.host import LocalHost
from tests.unit.test_gpu_vm_placement import VIRSH_STANDIN

KEPT = "var/lib/vela/failed"


@pytest.fixture
def host(tmp_path, monkeypatch):
    bin_dir, state, root = tmp_path / "bin", tmp_path / "domains", tmp_path / "root"
    for directory in (bin_dir, state, root / "run"):
        directory.mkdir(parents=True)
    (bin_dir / "virsh").write_text(VIRSH_STANDIN)
    (bin_dir / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("VIRSH_STATE", str(state))
    return LocalHost(str(root), name="hv-1")


def _define(host: LocalHost, name: str, others: str = "", memory: int = 1) -> None:
    xml = f"<domain><name>{name}</name><memory unit='GiB'>{memory}</memory></domain>"
    call = shell.call("vela_vm_define", name, base64.b64encode(xml.encode()).decode(), others)
    host.run_script(shell.script([call], sysroot=host.sysroot), timeout=60)


def test_a_refused_definition_is_kept_and_named_in_the_first_line(host):
    root = Path(host.sysroot)
    _define(host, "vm0")
    assert not (root / "var").exists()  # nothing kept when virsh took it
    with pytest.raises(CommandFailed) as caught:
        _define(host, "vm0", memory=2)  # a domain of that name exists: virsh refuses
    first, _, rest = str(caught.value).partition("\n")
    assert first == (
        "hv-1: command `sh -s --` exited with status 1: virsh define vm0 failed (its XML is "
        "kept at /var/lib/vela/failed/vm0.xml; `virt-xml-validate /var/lib/vela/failed/vm0.xml "
        "domain` shows schema errors):")
    assert "error: domain 'vm0' already exists" in rest
    assert (root / KEPT / "vm0.xml").read_text() == \
        "<domain><name>vm0</name><memory unit='GiB'>2</memory></domain>"
    assert not (root / "run/vela-domain-vm0.xml").exists()
    # The lock was released: the next guest defines at once, and leaves vm0's XML alone.
    _define(host, "vm1", others="vm0 ")
    assert (root / KEPT / "vm0.xml").exists()


def test_a_define_that_succeeds_later_removes_what_was_kept(host, tmp_path):
    _define(host, "vm0")
    with pytest.raises(CommandFailed):
        _define(host, "vm0")
    (tmp_path / "domains" / "vm0").unlink()  # undefined by hand, as an operator would
    _define(host, "vm0")
    assert not (Path(host.sysroot, KEPT)).exists() and Path(host.sysroot, "var/lib/vela").is_dir()
