"""The linters, run by the test suite: ruff over all the Python, shellcheck over all the shell.

This file owns linting in the suite (scripts/test and so CI run it, `--fast` included):
- ruff, the virtualenv's (pinned in requirements.txt), over every Python file in the
  repository, with the configuration in pyproject.toml;
- shellcheck, Debian's (installed by scripts/setup), over every shell script in the repository:
  scripts/*, .ci/run, providers/facts/gather.sh (POSIX sh, by its `shellcheck shell=` directive),
  the lab image's scripts, and any other file with a shell shebang or a `.sh` name;
- the shell the providers generate (apply scripts of real plans, observation sections, boot
  scripts, SriovPool's libvirt hook, the guest's tuning script), rendered from the HGX A100
  fixture and recorded lab facts and checked as POSIX sh, the dialect hosts run it in (`sh -s`).
The virtualenv, .git and local state (.lab, .pulumi-state, caches) are not the project's code
and are left out. A missing linter fails, saying to run scripts/setup: the suite never passes
without having linted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = ROOT / ".venv" / "bin" / "ruff"
# Directory names that hold no code of the project's own, wherever they are.
NOT_CODE = {".git", ".venv", ".lab", ".pulumi-state", ".ruff_cache", ".pytest_cache",
            "__pycache__", ".bench-venv"}
SHEBANG = re.compile(rb"#![^\n]*\b(?:sh|bash|dash|ash|ksh)\b")
# The shell scripts that must be linted by name; the search below must find each of them.
NAMED_SHELL = [*sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "scripts").iterdir()
                       if p.is_file()), ".ci/run", "providers/facts/gather.sh"]


def _project_files() -> list[Path]:
    files = []
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = sorted(name for name in subdirectories if name not in NOT_CODE)
        files += [Path(directory, name) for name in sorted(names)]
    return files


def _is_shell(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as file:
        return bool(SHEBANG.match(file.readline(200)))


def _shell_files() -> list[str]:
    return [path.relative_to(ROOT).as_posix() for path in _project_files() if _is_shell(path)]


def _ruff() -> str:
    if not os.access(RUFF, os.X_OK):
        pytest.fail(f"ruff is not installed in the virtualenv ({RUFF.relative_to(ROOT)}): run "
                    "scripts/setup", pytrace=False)
    return str(RUFF)


def shellcheck(*arguments: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run shellcheck from ROOT with `arguments`. To check text rather than files, pass it as
    `script`, with `--shell=DIALECT` and `-` among the arguments."""
    program = shutil.which("shellcheck")
    if program is None:
        pytest.fail("shellcheck is not installed: run scripts/setup (its apt stage installs it)",
                    pytrace=False)
    return subprocess.run([program, "--color=never", *arguments], cwd=ROOT, input=script,
                          capture_output=True, text=True)


def test_ruff_is_the_pinned_version():
    pinned = re.search(r"^ruff==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned, "requirements.txt pins no ruff"
    version = subprocess.run([_ruff(), "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    assert version == pinned[1], (f"ruff {version} in .venv, but requirements.txt pins "
                                  f"{pinned[1]}: run scripts/setup")


def test_ruff_checks_every_python_file():
    """An exclude in pyproject.toml cannot quietly take code out of the check."""
    listed = subprocess.run([_ruff(), "check", "--no-cache", "--show-files", "."], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    checked = {Path(line.strip()).resolve() for line in listed.splitlines() if line.strip()}
    python = {path.resolve() for path in _project_files() if path.suffix == ".py"}
    assert Path(__file__).resolve() in python
    missed = sorted(path.relative_to(ROOT).as_posix() for path in python - checked)
    assert not missed, f"ruff leaves out these Python files: {missed}"


def test_ruff_passes():
    result = subprocess.run([_ruff(), "check", "--no-cache", "--output-format=concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"ruff check (exit {result.returncode}); `.venv/bin/ruff check --fix` fixes "
                    f"what is marked [*]:\n{result.stdout}{result.stderr}", pytrace=False)


def test_every_named_shell_script_is_found():
    found = _shell_files()
    assert [name for name in NAMED_SHELL if name not in found] == []


def test_shellcheck_passes():
    files = _shell_files()
    result = shellcheck("--", *files)
    if result.returncode != 0:
        pytest.fail(f"shellcheck on {len(files)} scripts (exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}", pytrace=False)


# -- the shell the providers generate ------------------------------------------------------------

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _generated_shell(tmp_path: Path) -> dict[str, str]:
    """Every kind of script the providers hand to a host or a guest, rendered from real plans:
    HostTuning on the HGX fixture (firmware, GRUB, registers, huge pages, the boot unit),
    SriovPool and GpuVm on a recorded lab host."""
    from providers.common import shell
    from providers.common.converge import Round
    from providers.facts import GATHER_SCRIPT, gather_facts, parse_gather_output
    from providers.gpu_vm import guest
    from providers.gpu_vm.observe import VmObservations
    from providers.gpu_vm.observe import observe_script as vm_observe_script
    from providers.gpu_vm.placement import place
    from providers.gpu_vm.plan import plan as vm_plan
    from providers.gpu_vm.plan import plan_removal, removal_finish
    from providers.gpu_vm.spec import GpuVmArgs
    from providers.gpu_vm.target import DomainTarget
    from providers.host_tuning.observe import BOOT_SCRIPT
    from providers.host_tuning.observe import observe_script as host_observe_script
    from providers.host_tuning.plan import plan as host_plan
    from providers.host_tuning.provider import observe as host_observe
    from providers.host_tuning.spec import HostTuningArgs
    from providers.host_tuning.target import desired_target, select_topology
    from providers.sriov_pool.bootunit import boot_script as pool_boot_script
    from providers.sriov_pool.hook import hook_script
    from providers.sriov_pool.observe import PoolObservations
    from providers.sriov_pool.observe import observe_script as pool_observe_script
    from providers.sriov_pool.plan import plan as pool_plan
    from providers.sriov_pool.spec import SriovPoolArgs
    from providers.sriov_pool.target import desired_target as pool_target
    from providers.sriov_pool.target import find_pf
    from tests.support.fakekernel import FakeKernel, KernelHost, firmware_standin
    from tests.support.hgx import hgx_a100
    from tests.support.recorded import recorded

    fake, _ = hgx_a100(nic_vfs=2, grub_defaults=recorded("files/etc-default-grub-debian12.txt"))
    root = fake.write(tmp_path / "hgx")
    host = KernelHost(FakeKernel(fake, root))
    tuning = HostTuningArgs.model_validate({
        "address": "10.0.0.1", "hostKey": HOST_KEY, "hugepages": {"perNode": {"0": 8}},
        "sysctls": {"vm.swappiness": "10"}, "firmware": {"tool": firmware_standin(root)}})
    now = host_observe(host, tuning)
    target = desired_target(tuning, now.facts, now.observed,
                            select_topology(tuning, now.facts))
    tuning_plan = host_plan(target, now.facts, now.observed)
    assert {"firmware", "kernel-args", "register", "driver"} <= {
        change.kind for change in tuning_plan.changes}

    lab = parse_gather_output(recorded("gather/lab-host-q35-switch.txt"))
    pool = SriovPoolArgs.model_validate({
        "address": "10.0.0.7", "hostKey": HOST_KEY, "pf": "enp68s0", "numVfs": 4,
        "network": {"name": "pool-a"}, "defaults": {"vlan": 100}})
    observed = PoolObservations(pf="0000:44:00.0", netdev="enp68s0", autoprobe="1")
    pf = find_pf(pool, lab, observed)
    wanted = pool_target(pool, lab, observed, pf)

    # The hook exists where VFs have ATS to hold: an HGX node whose ConnectX VFs have it.
    ats_host, ats_layout = hgx_a100(nic_vfs=2, nic_ats=True)
    ats_facts = gather_facts(KernelHost(FakeKernel(ats_host, ats_host.write(tmp_path / "ats"))))
    ats_pool = SriovPoolArgs.model_validate({
        "address": "10.0.0.1", "hostKey": HOST_KEY, "pf": ats_layout.nic_pfs[0], "numVfs": 2,
        "network": {"name": "pool-a"}})
    ats_pf = find_pf(ats_pool, ats_facts, PoolObservations())
    ats_target = pool_target(ats_pool, ats_facts, PoolObservations(), ats_pf)
    hook = hook_script(ats_pool, ats_target)
    assert hook is not None
    ats_seen = PoolObservations(pf=ats_pf.address, autoprobe="0",
                                netdev=ats_layout.switches[0].nic_interfaces[0])
    ats_apply = pool_plan(ats_pool, ats_target, ats_facts, ats_seen, ats_pf).calls
    assert any("systemctl reload" in call for call in ats_apply)  # the hook's creation

    vm = GpuVmArgs.model_validate({
        "address": "10.0.0.1", "hostKey": HOST_KEY, "name": "lab-vm", "vcpus": 2,
        "memoryGib": 2, "gpus": 2, "domainType": "qemu", "cpuModel": "qemu64",
        "gpuSelector": ["1af4:1110"], "reservedCpus": 0,
        "image": {"path": "/var/lib/vela/base.qcow2", "sizeGib": 20}})
    layout = place(vm, lab, {})
    ids = {device.host_address: "0x1af4:0x1110" for device in layout.devices}
    topology = guest.nccl_topology(layout, lab.cpu_vendor)
    domain = DomainTarget(layout=layout, xml="<domain/>", seed=b"seed", topology=topology)
    creating = vm_plan(vm, domain, VmObservations(), Round(booted=False, number=0))
    present = VmObservations(present={"/var/lib/libvirt/images/vela/lab-vm.qcow2"})
    return {
        "HostTuning apply": shell.script(tuning_plan.calls, sysroot=str(root)),
        "HostTuning boot script": target.files[BOOT_SCRIPT],
        "HostTuning observation": GATHER_SCRIPT + host_observe_script(tuning),
        "SriovPool apply": shell.script(
            pool_plan(pool, wanted, lab, observed, pf).calls),
        "SriovPool boot script": pool_boot_script(pool, wanted, pf),
        "SriovPool observation": GATHER_SCRIPT + pool_observe_script(pool),
        "SriovPool libvirt hook": hook,
        "SriovPool apply (installs the hook)": shell.script(ats_apply),
        "GpuVm apply": shell.script(creating.calls),
        "GpuVm removal": shell.script(plan_removal(vm, present).calls + removal_finish()),
        "GpuVm observation": GATHER_SCRIPT + vm_observe_script(vm),
        "GpuVm guest tuning": guest.tuning_script(vm, layout, ids, topology),
    }


def test_shellcheck_passes_on_the_shell_the_providers_generate(tmp_path):
    failures = []
    for name, script in _generated_shell(tmp_path).items():
        result = shellcheck("--shell=sh", "-", script=script)
        if result.returncode != 0:
            failures.append(f"== {name} (exit {result.returncode}):\n{result.stdout}"
                            f"{result.stderr}")
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
