"""A kernel command line with more than one huge page pool.

`hugepages=N` counts pages of the size set by the `hugepagesz=` (or `default_hugepagesz=`) just
before it (Documentation/admin-guide/kernel-parameters.txt, hugepages= and hugepagesz=;
Documentation/admin-guide/mm/hugetlbpage.rst, "Hugetlb boot command line parameter
semantics"), so `hugepagesz=2M hugepages=1024 hugepagesz=1G hugepages=16` is two pools, and a
`hugepages=` that comes before any size counts pages of the default size. vela owns its own
pool (`hugepagesz=<its size>` and the `hugepages=` after it) and `default_hugepagesz`; another
pool's pair stays where and as it is, and delete gives the original line back byte for byte.

Everything goes through the production path on the HGX fixture: observe, desired_target,
original_target, plan, and the provider's own converge and delete with the fake kernel.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pytest

from providers.errors import VelaError
from providers.host_tuning import grub
from providers.host_tuning.observe import GRUB_DEFAULTS
from providers.host_tuning.plan import plan
from providers.host_tuning.provider import converge_desired, observe, restore_originals
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import (
    Target,
    desired_target,
    merge_originals,
    original_target,
    select_topology,
)
from tests.support.fakekernel import BOOT_PREFIX, FakeKernel, KernelHost
from tests.support.hgx import hgx_a100
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
DEBIAN_GRUB = recorded("files/etc-default-grub-debian12.txt")
VELA_POOL = ["default_hugepagesz=1G", "hugepagesz=1G", "hugepages=0:8,1:8"]


def grub_defaults(linux: str, default: str = "quiet") -> str:
    """Debian 12's /etc/default/grub with these two variables."""
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""', f'GRUB_CMDLINE_LINUX="{linux}"')
    return text.replace('GRUB_CMDLINE_LINUX_DEFAULT="quiet"',
                        f'GRUB_CMDLINE_LINUX_DEFAULT="{default}"')


class PoolRig:
    """An HGX node booted with `linux` + `default` as its configured arguments; `pools`: the
    pages each node holds now, by size in KiB (what that command line reserved)."""

    def __init__(self, root: Path, linux: str, default: str = "quiet",
                 pools: dict[int, int] | None = None) -> None:
        cmdline = " ".join(part for part in (BOOT_PREFIX, linux, default) if part)
        self.fake, self.layout = hgx_a100(cmdline=cmdline,
                                          grub_defaults=grub_defaults(linux, default))
        self.root = self.fake.write(root)
        for kib, pages in (pools or {}).items():
            for node in (0, 1):
                folder = self.root / f"sys/devices/system/node/node{node}/hugepages/" \
                                     f"hugepages-{kib}kB"
                for name in ("nr_hugepages", "free_hugepages"):
                    (folder / name).write_text(f"{pages}\n")
        self.kernel = FakeKernel(self.fake, self.root)
        self.host = KernelHost(self.kernel)
        self.spec = HostTuningArgs.model_validate({
            "address": "10.0.0.1", "hostKey": HOST_KEY, "reboot": "allowed",
            "hugepages": {"perNode": {"0": 8, "1": 8}}, "firmware": {"enabled": False}})

    def look(self):
        now = observe(self.host, self.spec)
        topology = select_topology(self.spec, now.facts)
        return now.facts, now.observed, desired_target(self.spec, now.facts, now.observed,
                                                       topology)

    def grub(self) -> str:
        return (self.root / GRUB_DEFAULTS.lstrip("/")).read_text()

    def variables(self) -> dict[str, list[str]]:
        return grub.variables(self.grub())

    def snapshot(self) -> dict[str, str]:
        """What kernel arguments change: configuration files, the command line, the huge page
        pools of every NUMA node."""
        state = {}
        for path in sorted(self.root.rglob("*")):
            relative = str(path.relative_to(self.root))
            if not relative.startswith(("etc/", "proc/cmdline", "sys/devices/system/node/")):
                continue
            if path.is_symlink():
                state[relative] = "-> " + str(path.readlink())
            elif path.is_file():
                state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        return state


def _kernel_args_change(current):
    return [change for change in current.changes if change.kind == "kernel-args"]


# -- /etc/default/grub -------------------------------------------------------------------------

def test_another_pool_keeps_its_pair_and_delete_gives_the_file_back(tmp_path):
    rig = PoolRig(tmp_path, "hugepagesz=2M hugepages=1024", pools={2048: 512})
    before, before_grub = rig.snapshot(), rig.grub()
    facts, observed, desired = rig.look()
    change, = _kernel_args_change(plan(desired, facts, observed))
    assert "-hugepages=1024" not in change.detail.split()
    assert "-hugepagesz=2M" not in change.detail.split()
    assert {f"+{token}" for token in VELA_POOL} <= set(change.detail.split())

    outputs = converge_desired(rig.host, rig.spec, {})
    assert outputs["inSync"] and not outputs["pendingReboot"]
    linux = rig.variables()[grub.LINUX]
    assert linux[:2] == ["hugepagesz=2M", "hugepages=1024"]  # where and as it was
    assert linux[-3:] == VELA_POOL
    assert " hugepagesz=2M hugepages=1024 " in (rig.root / "proc/cmdline").read_text()
    facts, _, _ = rig.look()
    assert facts.node(0).pool(1048576).total == 8 and facts.node(0).pool(2048).total == 512

    restored = restore_originals(rig.host, rig.spec, outputs)
    assert restored is not None and restored.reboots == 1
    assert rig.grub() == before_grub  # byte for byte
    after = rig.snapshot()
    assert [key for key in set(before) | set(after) if before.get(key) != after.get(key)] == []


def test_a_pool_of_vela_size_already_there_is_edited_in_place(tmp_path):
    rig = PoolRig(tmp_path, "hugepagesz=2M hugepages=1024 hugepagesz=1G hugepages=4",
                  pools={2048: 512, 1048576: 2})
    before, before_grub = rig.snapshot(), rig.grub()
    outputs = converge_desired(rig.host, rig.spec, {})
    assert outputs["inSync"]
    assert rig.variables()[grub.LINUX][:4] == ["hugepagesz=2M", "hugepages=1024",
                                               "hugepagesz=1G", "hugepages=0:8,1:8"]
    assert rig.variables()[grub.LINUX].count("hugepages=1024") == 1
    restore_originals(rig.host, rig.spec, outputs)
    assert rig.grub() == before_grub
    assert rig.snapshot() == before


def test_pools_in_either_variable_and_after_vela_pool_stay_put(tmp_path):
    rig = PoolRig(tmp_path, "hugepagesz=1G hugepages=4",
                  default="quiet hugepagesz=2M hugepages=1024")
    facts, observed, desired = rig.look()
    original = original_target(desired, facts, observed)
    current = rig.grub()
    edited = grub.edit(current, desired.grub)
    found = grub.variables(edited)
    assert found[grub.LINUX][:2] == ["hugepagesz=1G", "hugepages=0:8,1:8"]
    # default_hugepagesz goes where nothing after it can take it as its size: the end
    assert found[grub.DEFAULT] == ["quiet", "hugepagesz=2M", "hugepages=1024",
                                   "default_hugepagesz=1G"]
    assert grub.edit(edited, original.grub) == current
    # What the plan writes is that same edit.
    change, = _kernel_args_change(plan(desired, facts, observed))
    assert "-hugepages=1024" not in change.detail.split()


def test_a_size_set_for_a_pool_by_default_hugepagesz_is_not_duplicated(tmp_path):
    rig = PoolRig(tmp_path, "default_hugepagesz=1G hugepages=4")
    facts, observed, desired = rig.look()
    current = rig.grub()
    edited = grub.edit(current, desired.grub)
    assert grub.variables(edited)[grub.LINUX][:3] == VELA_POOL
    assert grub.edit(edited, original_target(desired, facts, observed).grub) == current


def test_a_change_that_would_resize_another_pool_is_refused(tmp_path):
    """`hugepages=1024` before any size counts pages of the default size, 2 MiB on x86: with
    vela's default_hugepagesz=1G it would reserve 1024 GiB at the next boot."""
    rig = PoolRig(tmp_path, "", default="quiet hugepages=1024", pools={2048: 512})
    before = rig.snapshot()
    facts, observed, desired = rig.look()
    with pytest.raises(VelaError, match=r"hugepages=1024.*hugepagesz=") as caught:
        plan(desired, facts, observed)
    assert "Traceback" not in str(caught.value)
    with pytest.raises(VelaError, match=r"hugepages=1024"):
        converge_desired(rig.host, rig.spec, {})
    assert rig.snapshot() == before  # nothing was written


def test_a_record_saved_by_an_earlier_version_still_restores(tmp_path):
    """Before pools were told apart, the originals keyed huge page arguments by name alone
    (`hugepagesz`, `hugepages`); delete restores such a record as that version did."""
    rig = PoolRig(tmp_path, "")
    facts, observed, desired = rig.look()
    pristine = rig.grub()
    tuned = grub.edit(pristine, desired.grub)
    legacy = {key: None for key in ["intel_iommu", "iommu", "vfio_pci.ids",
                                    "modprobe.blacklist", "rd.driver.blacklist",
                                    "default_hugepagesz", "hugepagesz", "hugepages"]}
    saved = Target(kernel_args=legacy, grub={grub.LINUX: dict(legacy)})
    observed.files[GRUB_DEFAULTS] = tuned
    captured = original_target(desired, facts, observed)  # what is there now: the tuned line
    originals = merge_originals(saved.model_dump(), captured)
    assert _kernel_args_change(plan(originals, facts, observed))
    assert grub.edit(tuned, originals.grub) == pristine


# -- grubby -------------------------------------------------------------------------------------

def _name(token: str) -> str:
    return token.split("=", 1)[0]


def grubby_c(args: list[str], add: list[str], remove: list[str]) -> list[str]:
    """grubby's own `--args`/`--remove-args` (rhboot/grubby grubby.c, updateActualImage): each
    added argument replaces the first not yet replaced argument of its name, else is appended;
    then each removed one takes out the first argument of its name (and value, when given)."""
    line, used = list(args), [False] * len(args)
    for arg in add:
        for index, item in enumerate(line):
            if not used[index] and _name(item) == _name(arg):
                line[index], used[index] = arg, True
                break
        else:
            line.append(arg)
            used.append(True)
    for arg in remove:
        for index, item in enumerate(line):
            if _name(item) == _name(arg) and ("=" not in arg or item == arg):
                del line[index]
                break
    return line


def grubby_bls(args: list[str], add: list[str], remove: list[str]) -> list[str]:
    """The grubby-bls script's update_args (Fedora's grubby, BLS entries): `name=value` removes
    the first such argument, a bare name every argument of that name; each added argument first
    removes every argument of its name, then all are appended."""
    line = list(args)
    for arg in remove:
        if "=" in arg:
            if arg in line:
                line.remove(arg)
        else:
            line = [item for item in line if _name(item) != arg]
    for arg in add:
        key = arg.rsplit("=", 1)[0]
        line = [item for item in line if _name(item) != key]
    return line + add


def run_grubby(calls: list[str], args: str, implementation) -> str:
    line = args.split()
    for command in calls:
        name, add, remove = shlex.split(command)
        assert name == "vela_grubby"
        line = implementation(line, add.split(), remove.split())
    return " ".join(line)


def _pools(text: str) -> dict[str, str]:
    """Each pool's size and count, as the kernel reads the line."""
    tokens = text.split()
    keyed = dict(zip(_keys(tokens), tokens, strict=True))
    return {key: token for key, token in keyed.items() if key.startswith("hugepages[")}


def _keys(tokens: list[str]) -> list[str]:
    keys, size = [], None
    for token in tokens:
        name, _, value = token.partition("=")
        if name in ("hugepagesz", "default_hugepagesz"):
            size = value
        keys.append(f"hugepages[{size}]" if name == "hugepages" else name)
    return keys


@pytest.mark.parametrize("implementation", [grubby_c, grubby_bls])
@pytest.mark.parametrize("args", [
    "ro crashkernel=auto hugepagesz=2M hugepages=1024 rhgb quiet",
    "ro crashkernel=auto rhgb quiet hugepagesz=2M hugepages=1024",
    "ro rhgb quiet hugepagesz=2M hugepages=1024 hugepagesz=1G hugepages=4",
    "ro hugepagesz=1G hugepages=4 quiet hugepagesz=2M hugepages=1024",
])
def test_grubby_hosts_keep_other_pools(tmp_path, implementation, args):
    rig = PoolRig(tmp_path, "")
    facts, observed, _ = rig.look()
    observed.tools["grubby"] = "/usr/sbin/grubby"
    observed.grubby_args = args
    topology = select_topology(rig.spec, facts)
    desired = desired_target(rig.spec, facts, observed, topology)
    original = original_target(desired, facts, observed)
    tuned = run_grubby(_kernel_args_change(plan(desired, facts, observed))[0].calls, args,
                       implementation)
    assert _pools(tuned) == {"hugepages[2M]": "hugepages=1024",
                             "hugepages[1G]": "hugepages=0:8,1:8"}
    assert "hugepagesz=2M hugepages=1024" in tuned
    observed.grubby_args = tuned
    assert _kernel_args_change(plan(desired, facts, observed)) == []  # converged
    restored = run_grubby(_kernel_args_change(plan(original, facts, observed))[0].calls, tuned,
                          implementation)
    assert _pools(restored) == _pools(args)
    assert sorted(restored.split()) == sorted(args.split())
    pools = [token for token in args.split() if token.startswith("hugepage")]
    if args.endswith(" ".join(pools)):
        # Huge page arguments last on the line: grubby, which can only append, puts them back
        # where they were.
        assert restored == args
