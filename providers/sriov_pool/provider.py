"""The SriovPool dynamic provider: one NIC port's virtual functions, ready for passthrough.

parse inputs -> gather facts and observations (one remote command) -> find the PF -> preflight
-> plan (pure) -> apply (one remote command) -> gather again -> plan again (after a count change
the new VFs get their settings) -> verify: the shared converge loop of `providers.common`. A
boot unit re-creates the VFs with the same settings at every boot. Delete returns the PF to the
VF count and settings it had, through the same planner; the originals are saved on the host
before the first change and in the outputs.
"""

from __future__ import annotations

import time

from pulumi.dynamic import ReadResult

from ..common import originals as saved
from ..common import progress, shell
from ..common.converge import Converger, Outcome, look
from ..common.dynamic import HostResourceProvider
from ..common.plan import Plan, Snapshot
from ..errors import SriovPoolError
from ..facts.models import PciDevice
from ..host import Host
from .observe import (
    HOOK_DIR,
    ORIGINALS_DIRS,
    PoolObservations,
    observe_script,
    parse_observations,
    paths,
)
from .plan import plan, vf_users
from .preflight import preflight
from .spec import SriovPoolArgs
from .target import PoolTarget, desired_target, find_pf, original_target

# Another machine or another port is a new pool, and so is another VF count: the kernel
# refuses to change a live count (drivers/pci/iov.c, sriov_numvfs_store: -EBUSY "VFs already
# enabled. Disable before enabling"), so a new count destroys every VF first. As a replacement
# the engine deletes the guests holding the old VFs before the pool, and says so in the plan.
REPLACE_ON = {"address", "port", "pf", "numVfs"}
RELEASE_POLL = 5.0  # seconds between looks while guests still hold the VFs
OUTPUT_KEYS = ["pfDevice", "vfs", "networkName", "changes", "originals", "inSync", "drift"]


class SriovPoolProvider(HostResourceProvider):
    """Pickled into every SriovPool resource's state: attributes are plain data only."""

    kind = "SriovPool"
    args_model = SriovPoolArgs
    error = SriovPoolError
    output_keys = OUTPUT_KEYS
    replace_on = REPLACE_ON
    model_error_field = "pf"  # model-level errors are about the port

    def converge(self, host: Host, spec: SriovPoolArgs, props: dict,
                 previous: dict | None) -> dict:
        return converge_desired(host, spec, props, previous)

    def remove(self, host: Host, spec: SriovPoolArgs, props: dict) -> None:
        restore_originals(host, spec, props)

    def resource_id(self, spec: SriovPoolArgs, outputs: dict) -> str:
        return f"{spec.address}:{spec.port}/{spec.pf}"

    def read(self, id_: str, props: dict) -> ReadResult:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        now = observe(host, spec)
        pf = find_pf(spec, now.facts, now.observed)
        desired = desired_target(spec, now.facts, now.observed, pf)
        drift = plan(spec, desired, now.facts, now.observed, pf, refuse=False)
        found = _originals(host, spec, props, now.observed) or original_target(
            spec, desired, now.facts, now.observed, pf)
        return ReadResult(id_, outputs(spec, props, now, pf, found, drift, []))


# -- converging ------------------------------------------------------------------------------

def observe(host: Host, spec: SriovPoolArgs) -> Snapshot[PoolObservations]:
    """Hardware facts and SriovPool's observations, from one remote command."""
    return look(host, observe_script(spec), parse_observations)


def converger(host: Host, spec: SriovPoolArgs, target_for) -> Converger[PoolObservations]:
    """The shared converge loop, planning towards `target_for(snapshot, pf)`. A count change
    takes two rounds: the count, then the new VFs' settings."""

    def plan_for(now: Snapshot[PoolObservations], _at) -> Plan:
        pf = find_pf(spec, now.facts, now.observed)
        return plan(spec, target_for(now, pf), now.facts, now.observed, pf)

    return Converger(host=host, look=lambda: observe(host, spec), plan_for=plan_for,
                     error=SriovPoolError, apply_timeout=spec.wait_timeout + 600)


def converge_desired(host: Host, spec: SriovPoolArgs, props: dict,
                     previous: dict | None = None) -> dict:
    """Create and update: preflight, save the originals, converge, and the outputs."""
    now = observe(host, spec)
    pf = find_pf(spec, now.facts, now.observed)
    problems = preflight(spec, pf)
    if problems:
        raise SriovPoolError(f"{host.name}: {' '.join(problems)}. Nothing was changed.")
    now = released(host, spec, now, lambda snapshot, port: desired_target(
        spec, snapshot.facts, snapshot.observed, port))
    pf = find_pf(spec, now.facts, now.observed)
    desired = desired_target(spec, now.facts, now.observed, pf)
    originals = _originals(host, spec, previous or {}, now.observed) or original_target(
        spec, desired, now.facts, now.observed, pf)
    where = paths(spec)["originals"]
    done = converger(host, spec, lambda snapshot, port: desired_target(
        spec, snapshot.facts, snapshot.observed, port)).converge(
        now, first=saved.save_calls(where, originals, now.observed.files.get(where)))
    pf = find_pf(spec, done.snapshot.facts, done.snapshot.observed)
    return outputs(spec, props, done.snapshot, pf, originals, done.plan, done.changes)


def released(host: Host, spec: SriovPoolArgs, now: Snapshot[PoolObservations],
             target_for) -> Snapshot[PoolObservations]:
    """The host once no guest holds the VFs a count change would remove, waiting up to
    `releaseTimeout`: the engine may delete a pool at the same moment as the guests that use it
    (replacing several pools and the VMs that take VFs from all of them, it runs the pools'
    delete-before-replace chains side by side). Past the deadline the plan refuses, naming them."""
    deadline = time.monotonic() + spec.release_timeout
    while time.monotonic() < deadline:
        pf = find_pf(spec, now.facts, now.observed)
        users = vf_users(now.observed, pf, target_for(now, pf))
        if not users:
            break
        progress.report("waiting for guests to release the VFs", ", ".join(sorted(users)))
        time.sleep(RELEASE_POLL)
        now = observe(host, spec)
    return now


def restore_originals(host: Host, spec: SriovPoolArgs, props: dict) -> Outcome | None:
    """Delete: the VF count and settings the PF had, through the same planner; then the record
    goes. None when nothing was ever changed."""
    now = observe(host, spec)
    originals = _originals(host, spec, props, now.observed)
    if originals is None:
        return None
    now = released(host, spec, now, lambda *_: originals)
    # qemu.d too when the pool's hook was all it held: no package ships it (Debian 12's
    # libvirt-daemon-system ships /etc/libvirt/hooks, which stays).
    return converger(host, spec, lambda *_: originals).converge(
        now, finish=[*saved.removal_calls(paths(spec)["originals"], ORIGINALS_DIRS),
                     shell.call("vela_remove_empty_dirs", HOOK_DIR)])


def _originals(host: Host, spec: SriovPoolArgs, props: dict,
               observed: PoolObservations) -> PoolTarget | None:
    where = paths(spec)["originals"]
    found = saved.load(PoolTarget, observed.files.get(where), props, host=host.name,
                       path=where, error=SriovPoolError)
    if found is not None:
        # Saved before the pool had a libvirt hook: there was none, and delete removes it.
        found.files.setdefault(paths(spec)["hook"], None)
    return found


def outputs(spec: SriovPoolArgs, props: dict, now: Snapshot[PoolObservations], pf: PciDevice,
            originals: PoolTarget, drift: Plan, made: list[str]) -> dict:
    facts, observed = now.facts, now.observed
    vfs = []
    for vf in pf.virtfns:
        device = facts.pci.get(vf.address)
        if device is None:
            continue
        state = observed.vfs.get(vf.index)
        group = device.iommu_group
        vfs.append({"index": vf.index, "address": vf.address,
                    "mac": state.mac if state else None, "numaNode": device.numa_node,
                    "iommuGroup": group, "switch": facts.upstream_switch(vf.address),
                    "driver": device.driver,
                    "vfioDevice": f"/dev/vfio/{group}" if device.driver == "vfio-pci"
                    and group is not None else None})
    return {
        **SriovPoolProvider.inputs(props),
        "pfDevice": {"address": pf.address, "interface": observed.netdev,
                   "numaNode": pf.numa_node, "switch": facts.upstream_switch(pf.address),
                   "totalVfs": pf.sriov_totalvfs, "numVfs": pf.sriov_numvfs},
        "vfs": vfs,
        "networkName": spec.network.name if spec.network else None,
        "changes": made,
        "originals": saved.record(originals),
        "inSync": not drift.changes,
        "drift": drift.summaries(),
    }
