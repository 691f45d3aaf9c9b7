"""ATS on a pool's VFs once a guest holds them. vfio-pci resets a VF when QEMU opens it, and the
kernel puts ATS back only if it enabled ATS itself, so the ATS SriovPool wrote from user space is
lost at every guest start; the pool's libvirt qemu hook writes it again once the guest started.

An HGX node as SriovPool leaves it (its unit, script and hook installed, a boot made the VFs
and wrote their ATS), the fake kernel opening VFs as vfio does, and the pool's hooks run as
libvirt runs them (src/util/virhook.c virHookCall: the `qemu` script, then each executable in
`qemu.d/` in strcmp order, with `guest operation sub-operation extra` and the domain XML on
stdin).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from providers.facts import gather_facts
from providers.sriov_pool.hook import hook_script, libvirt_address
from providers.sriov_pool.observe import PoolObservations, paths
from providers.sriov_pool.spec import SriovPoolArgs
from providers.sriov_pool.target import desired_target, find_pf
from tests.support.fakekernel import FakeKernel, KernelHost
from tests.support.hgx import hgx_a100
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
HOOKS = "etc/libvirt/hooks"
SUBOPERATIONS = {"prepare": "begin", "start": "begin", "started": "begin", "stopped": "end",
                 "release": "end", "migrate": "begin"}  # libvirt docs/hooks.rst, qemu


def _spec(pf: str, **changes) -> SriovPoolArgs:
    return SriovPoolArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY, "pf": pf,
                                         "numVfs": 2, **changes})


def _node(root: Path, **changes):
    """An HGX node with a 2-VF pool on its first NIC port as SriovPool leaves it: the pool's
    files installed, its unit enabled, and a boot that made the VFs (on vfio-pci, ATS on)."""
    fake, layout = hgx_a100(nic_vfs=2, nic_ats=True,
                            grub_defaults=recorded("files/etc-default-grub-debian12.txt"))
    fake.write(root)
    kernel = FakeKernel(fake, root)
    facts = gather_facts(KernelHost(kernel))
    spec = _spec(layout.nic_pfs[0], **changes)
    pf = find_pf(spec, facts, PoolObservations())
    target = desired_target(spec, facts, PoolObservations(), pf)
    where = paths(spec)
    for path, content in target.files.items():
        if content is None:
            continue
        file = root / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
        file.chmod(0o755 if path in (where["script"], where["hook"]) else 0o644)
    link = root / where["link"].lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"../{link.name}")
    kernel.reboot()
    assert kernel.failed_units == [] and kernel.refusals == []
    vfs = [vf.address for vf in kernel.host.functions[pf.address].virtfns]
    assert len(vfs) == 2 and all(kernel.driver_of(vf) == "vfio-pci" for vf in vfs)
    registers = {register.address: register for register in target.registers.values()}
    assert sorted(registers) == sorted(vfs)  # one ATS register per VF
    return kernel, registers, vfs


def _ats(kernel: FakeKernel, register) -> int:
    config = (kernel.root / "sys/bus/pci/devices" / register.address / "config").read_bytes()
    return int.from_bytes(config[register.offset:register.offset + 2], "little") & register.mask


def _domain(*addresses: str, network: str | None = None) -> str:
    """A guest's XML as libvirt formats it: each host VF as a <hostdev>'s source address."""
    devices = []
    for address in addresses:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        devices.append(f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
                       f"domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' "
                       f"function='0x{int(function)}'/></source></hostdev>")
    if network:
        devices.append(f"<interface type='network'><source network='{network}'/></interface>")
    return (f"<domain type='kvm'><name>guest</name><devices>{''.join(devices)}</devices>"
            f"</domain>\n")


def _libvirt_hook(kernel: FakeKernel, scratch: Path, operation: str, xml: str) -> list:
    """libvirt's virHookCall for the qemu driver: every executable hook in order, each with
    the domain XML on stdin; here each runs against the fixture's root (R) under the fake
    kernel, as systemd's units do in FakeKernel._run_units. Returns their results."""
    hooks = kernel.root / HOOKS
    scripts = [hooks / "qemu"] if os.access(hooks / "qemu", os.X_OK) else []
    if (hooks / "qemu.d").is_dir():
        scripts += sorted((path for path in (hooks / "qemu.d").iterdir()
                           if path.is_file() and os.access(path, os.X_OK)),
                          key=lambda path: path.name.encode())
    assert scripts, "no qemu hook installed"
    results = []
    for script in scripts:
        text = script.read_text()
        assert "\nR=''\n" in text, f"{script} does not set the sysroot as shell.script does"
        rooted = scratch / f"{script.name}.rooted"
        rooted.write_text(text.replace("\nR=''\n", f"\nR={shlex.quote(str(kernel.root))}\n", 1))
        command = shlex.join(["sh", str(rooted), "guest", operation,
                              SUBOPERATIONS[operation], "-"])
        results.append(kernel.run(command, xml.encode(), timeout=60))
    return results


def test_a_vf_opened_through_vfio_loses_the_ats_user_space_wrote(tmp_path):
    """The stand-in: the open resets the VF (FLR) and the restore does not write ATS back,
    unless the kernel itself had enabled it; opens the real kernel refuses are refused."""
    kernel, registers, vfs = _node(tmp_path / "root")
    first, second = (registers[vf] for vf in vfs)
    assert _ats(kernel, first) == _ats(kernel, second) == 0x8000  # the boot wrote them
    before = (kernel.root / "sys/bus/pci/devices" / vfs[0] / "config").read_bytes()
    assert kernel.vfio_open(vfs[0]) is None
    assert _ats(kernel, first) == 0
    after = (kernel.root / "sys/bus/pci/devices" / vfs[0] / "config").read_bytes()
    assert after[:0x40] == before[:0x40]  # pci_restore_config_space
    assert _ats(kernel, second) == 0x8000  # the other VF was not opened
    assert kernel.vfio_open(vfs[1], kernel_ats=True) is None  # pci_restore_ats_state
    assert _ats(kernel, second) == 0x8000
    pf = kernel.host.functions[vfs[0]].physfn.address
    refused = kernel.vfio_open(pf)  # the PF stays on its NIC driver
    assert refused and "not vfio-pci" in refused and refused in kernel.refusals


def test_the_pools_hook_writes_ats_again_once_the_guest_started(tmp_path):
    kernel, registers, vfs = _node(tmp_path / "root")
    first, second = (registers[vf] for vf in vfs)
    for vf in vfs:
        assert kernel.vfio_open(vf) is None
    assert _ats(kernel, first) == _ats(kernel, second) == 0

    # A guest holding nothing of the pool: nothing is written.
    for result in _libvirt_hook(kernel, tmp_path, "started", _domain()):
        assert (result.exit_code, result.stdout) == (0, b"")
    assert _ats(kernel, first) == _ats(kernel, second) == 0

    # The guest holding the first VF started: that VF's ATS is on again, the other's not.
    for result in _libvirt_hook(kernel, tmp_path, "started", _domain(vfs[0])):
        # Empty output: a qemu.d script is also an XML filter, and empty means unchanged.
        assert (result.exit_code, result.stdout, result.stderr) == (0, b"", b"")
    assert (_ats(kernel, first), _ats(kernel, second)) == (0x8000, 0)

    # Events that reset nothing leave the VFs alone; `release` (vfio closed them) does not.
    for result in _libvirt_hook(kernel, tmp_path, "prepare", _domain(vfs[1])):
        assert (result.exit_code, result.stdout) == (0, b"")
    assert _ats(kernel, second) == 0
    for result in _libvirt_hook(kernel, tmp_path, "release", _domain(vfs[1])):
        assert (result.exit_code, result.stdout) == (0, b"")
    assert _ats(kernel, second) == 0x8000
    assert kernel.refusals == []


def test_a_guest_on_the_pools_network_gets_the_pools_vfs_back(tmp_path):
    """A VF handed out by the pool's libvirt network (forward mode hostdev) is libvirt's choice:
    a guest naming the network gets every VF of the pool written."""
    kernel, registers, vfs = _node(tmp_path / "root", network={"name": "pool-a"})
    for vf in vfs:
        kernel.vfio_open(vf)
    for result in _libvirt_hook(kernel, tmp_path, "started", _domain(network="pool-b")):
        assert result.exit_code == 0
    assert [_ats(kernel, registers[vf]) for vf in vfs] == [0, 0]
    for result in _libvirt_hook(kernel, tmp_path, "started", _domain(network="pool-a")):
        assert (result.exit_code, result.stdout) == (0, b"")
    assert [_ats(kernel, registers[vf]) for vf in vfs] == [0x8000, 0x8000]


def test_a_write_that_fails_fails_the_hook(tmp_path):
    """libvirt refuses a guest whose `started` hook fails and logs its stderr: a guest without
    the pool's ATS would otherwise run unseen."""
    kernel, registers, vfs = _node(tmp_path / "root")
    config = kernel.root / "sys/bus/pci/devices" / vfs[0] / "config"
    config.unlink()  # a VF whose config space cannot be read
    results = _libvirt_hook(kernel, tmp_path, "started", _domain(vfs[0]))
    assert results[-1].exit_code != 0
    assert f"cannot read register {registers[vfs[0]].offset} of {vfs[0]}" in \
        results[-1].stderr.decode()


# -- the hook's text ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hgx_pool(tmp_path_factory):
    fake, layout = hgx_a100(nic_vfs=2, nic_ats=True)
    facts = gather_facts(KernelHost(FakeKernel(fake, fake.write(tmp_path_factory.mktemp("h")))))
    return facts, layout.nic_pfs[0]


def _target(hgx_pool, **changes):
    facts, pf_address = hgx_pool
    spec = _spec(pf_address, **changes)
    pf = find_pf(spec, facts, PoolObservations())
    return spec, desired_target(spec, facts, PoolObservations(), pf), pf


def test_the_hook_is_rendered_from_the_pools_ats_registers(hgx_pool):
    spec, target, pf = _target(hgx_pool, network={"name": "pool-a"})
    text = target.files[paths(spec)["hook"]]
    assert text == hook_script(spec, target)
    stem = pf.address.replace(":", "-").replace(".", "-")
    assert paths(spec)["hook"] == f"/etc/libvirt/hooks/qemu.d/vela-sriov-{stem}"
    assert text.startswith("#!/bin/sh\n# Written by vela (SriovPool)")
    assert "xml=$(cat)" in text and "started|release) ;;" in text
    assert "virsh" not in text.split("\nR=''\n", 1)[1]  # never back into libvirt
    for register in target.registers.values():
        assert f"vela_cfg_write {register.address} {register.offset} 32768 32768" in text
        assert libvirt_address(register.address) in text.replace("'\"'\"'", "'")
    assert "network='\"'\"'pool-a'\"'\"'" in text
    assert libvirt_address("0000:4b:01.2") == \
        "domain='0x0000' bus='0x4b' slot='0x01' function='0x2'"


@pytest.mark.parametrize("changes", [{"ats": False}, {"mode": "baremetal", "driver": "host"}])
def test_no_hook_where_the_pool_holds_no_ats(hgx_pool, changes):
    """Without ATS to hold (off, or baremetal's ATS 0, which a reset leaves as it is) the hook is
    absent, and a hook left from before is removed."""
    spec, target, _ = _target(hgx_pool, **changes)
    assert hook_script(spec, target) is None
    assert paths(spec)["hook"] in target.files and target.files[paths(spec)["hook"]] is None
