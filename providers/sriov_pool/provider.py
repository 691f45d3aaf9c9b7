"""The SriovPool dynamic provider: one NIC port's virtual functions, ready for passthrough.

parse inputs -> gather facts and observations (one remote command) -> find the PF -> preflight
-> plan (pure) -> apply (one remote command) -> gather again -> plan again (after a count change
the new VFs get their settings) -> verify. A boot unit re-creates the VFs with the same settings
at every boot. Delete returns the PF to the VF count and settings it had, through the same
planner; the originals are saved on the host before the first change and in the outputs.
"""

from __future__ import annotations

import json

from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)

from ..common import shell
from ..common.dynamic import HostResourceProvider
from ..facts import parse_facts, run_gather
from ..facts.models import HostFacts, PciDevice
from ..host import Host
from .observe import (
    ORIGINALS_DIRS,
    PoolObservations,
    observe_script,
    parse_observations,
    paths,
)
from .plan import (
    PoolError,
    PoolTarget,
    desired_target,
    find_pf,
    original_target,
    plan,
    preflight,
)
from .spec import SriovPoolArgs

ROUNDS = 3
# Another machine or another port is a new pool, and so is another VF count: the kernel
# refuses to change a live count (drivers/pci/iov.c, sriov_numvfs_store: -EBUSY "VFs already
# enabled. Disable before enabling"), so a new count destroys every VF first. As a replacement
# the engine deletes the guests holding the old VFs before the pool, and says so in the plan.
REPLACE_ON = {"address", "port", "pf", "numVfs"}
OUTPUT_KEYS = ["pfDevice", "vfs", "networkName", "changes", "originals", "inSync", "drift"]





class SriovPoolProvider(HostResourceProvider):
    """Pickled into every SriovPool resource's state: attributes are plain data only."""

    kind = "SriovPool"
    args_model = SriovPoolArgs
    error = PoolError
    output_keys = OUTPUT_KEYS
    model_error_field = "pf"  # model-level errors are about the port

    def diff(self, id_: str, olds: dict, news: dict) -> DiffResult:
        old, new = self.inputs(olds), self.inputs(news)
        changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        return DiffResult(changes=bool(changed) or olds.get("inSync") is False,
                          replaces=[key for key in changed if key in REPLACE_ON],
                          delete_before_replace=True)

    def create(self, props: dict) -> CreateResult:
        spec = self.parse_inputs(props)
        return CreateResult(f"{spec.address}:{spec.port}/{spec.pf}", self._converge(spec, props))

    def update(self, id_: str, olds: dict, news: dict) -> UpdateResult:
        return UpdateResult(self._converge(self.parse_inputs(news), news, previous=olds))

    def read(self, id_: str, props: dict) -> ReadResult:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        facts, observed = observe(host, spec)
        pf = find_pf(spec, facts, observed)
        desired = desired_target(spec, facts, observed, pf)
        drift = plan(spec, desired, facts, observed, pf, refuse=False)
        originals = _originals(spec, props, observed) or original_target(
            spec, desired, facts, observed, pf)
        return ReadResult(id_, outputs(spec, props, facts, observed, pf, originals, drift, []))

    def delete(self, id_: str, props: dict) -> None:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        facts, observed = observe(host, spec)
        originals = _originals(spec, props, observed)
        if originals is None:
            return
        converge(host, spec, facts, observed, lambda *_: originals, finish=[
            shell.call("vela_remove_file", paths(spec)["originals"]),
            shell.call("vela_remove_empty_dirs", *ORIGINALS_DIRS)])

    def _converge(self, spec: SriovPoolArgs, props: dict, previous: dict | None = None) -> dict:
        host = self._host(spec)
        facts, observed = observe(host, spec)
        pf = find_pf(spec, facts, observed)
        problems = preflight(spec, pf)
        if problems:
            raise PoolError(f"{host.name}: {' '.join(problems)}. Nothing was changed.")
        desired = desired_target(spec, facts, observed, pf)
        originals = _originals(spec, previous or {}, observed) or original_target(
            spec, desired, facts, observed, pf)
        record = originals_record(originals)
        where = paths(spec)["originals"]
        save = [] if observed.files.get(where) == record else \
            [shell.write_file(where, record, 0o600)]
        facts, observed, final, made = converge(
            host, spec, facts, observed,
            lambda f, o, p: desired_target(spec, f, o, p), extra_calls=save)
        pf = find_pf(spec, facts, observed)
        return outputs(spec, props, facts, observed, pf, originals, final, made)



def observe(host: Host, spec: SriovPoolArgs) -> tuple[HostFacts, PoolObservations]:
    text = run_gather(host, observe_script(spec))
    return parse_facts(host, text), parse_observations(text)


def converge(host: Host, spec: SriovPoolArgs, facts: HostFacts, observed: PoolObservations,
             target_for, *, extra_calls: list[str] = (), finish: list[str] = ()) -> tuple:
    """Apply and re-plan until nothing is left (a count change takes two rounds); verify."""
    made: list[str] = []
    pending = list(extra_calls)
    for _ in range(ROUNDS):
        pf = find_pf(spec, facts, observed)
        changes = plan(spec, target_for(facts, observed, pf), facts, observed, pf)
        calls = pending + [call for change in changes for call in change.calls]
        pending = []
        if not calls:
            break
        preamble = "" if host.sysroot == "/" else f"R='{host.sysroot}'\n"
        host.run_script(shell.script(calls, preamble=preamble), timeout=spec.wait_timeout + 600)
        made += [change.summary() for change in changes]
        facts, observed = observe(host, spec)
    pf = find_pf(spec, facts, observed)
    left = plan(spec, target_for(facts, observed, pf), facts, observed, pf)
    if left:
        raise PoolError(f"{host.name}: these settings did not take:\n - "
                        + "\n - ".join(change.summary() for change in left))
    if finish:
        preamble = "" if host.sysroot == "/" else f"R='{host.sysroot}'\n"
        host.run_script(shell.script(list(finish), preamble=preamble), timeout=120)
    return facts, observed, left, made


def originals_record(originals: PoolTarget) -> str:
    return json.dumps(originals.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"


def _originals(spec: SriovPoolArgs, props: dict, observed: PoolObservations) -> PoolTarget | None:
    """Saved on the host before the first change; else the last outputs' JSON string (Pulumi
    drops null values inside output objects, and "absent" is an original value)."""
    saved = observed.originals(paths(spec)["originals"])
    if saved:
        return PoolTarget.model_validate(saved)
    text = props.get("originals")
    return PoolTarget.model_validate(json.loads(text)) if isinstance(text, str) and text \
        else None


def outputs(spec: SriovPoolArgs, props: dict, facts: HostFacts, observed: PoolObservations,
            pf: PciDevice, originals: PoolTarget, drift: list, made: list[str]) -> dict:
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
        "originals": originals_record(originals),
        "inSync": not drift,
        "drift": [change.summary() for change in drift],
    }
