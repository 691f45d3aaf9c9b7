"""The HostTuning dynamic provider: one hypervisor host made ready for near-bare-metal VMs.

Every call follows one path: parse inputs -> gather facts (one remote command) -> select
devices -> preflight -> plan (pure) -> apply only the changes (one remote command) -> reboot
when allowed and needed, gather again, finish the plan -> verify. Delete plans towards the
original values saved before the first change (on the host and in the outputs) through the same
planner. The SSH private key comes from the stack config (`vela:sshPrivateKey`, a secret) via
`configure`; it is never an input and never an output.
"""

from __future__ import annotations

import json
from typing import Any

from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)

from ..common import shell
from ..common.dynamic import HostResourceProvider
from ..facts.models import HostFacts
from ..host import Host
from .converge import HostTuningError, Run, observe
from .observe import ORIGINALS_DIRS, ORIGINALS_FILE, Observations
from .plan import Plan, plan
from .preflight import preflight
from .spec import HostTuningArgs
from .target import (
    SelectionError,
    Target,
    Topology,
    acs_path,
    desired_target,
    merge_originals,
    original_target,
    select_topology,
)

REPLACE_ON = {"address", "port"}  # another machine: a new resource
OUTPUT_KEYS = ["gpus", "nics", "iommuGroups", "applied", "changes", "pendingReboot",
               "pendingReasons", "reboots", "originals", "inSync", "drift"]





class HostTuningProvider(HostResourceProvider):
    """Pickled into every HostTuning resource's state: attributes are plain data only."""

    kind = "HostTuning"
    args_model = HostTuningArgs
    error = HostTuningError
    output_keys = OUTPUT_KEYS

    # -- engine calls ----------------------------------------------------------------------------

    def diff(self, id_: str, olds: dict, news: dict) -> DiffResult:
        old, new = self.inputs(olds), self.inputs(news)
        changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        drifted = olds.get("inSync") is False or bool(olds.get("pendingReboot"))
        return DiffResult(changes=bool(changed) or drifted,
                          replaces=[key for key in changed if key in REPLACE_ON],
                          delete_before_replace=True)

    def create(self, props: dict) -> CreateResult:
        spec = self.parse_inputs(props)
        return CreateResult(f"{spec.address}:{spec.port}", self._converge(spec, props))

    def update(self, id_: str, olds: dict, news: dict) -> UpdateResult:
        return UpdateResult(self._converge(self.parse_inputs(news), news, previous=olds))

    def read(self, id_: str, props: dict) -> ReadResult:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        facts, observed = observe(host, spec)
        topology = _topology(host, spec, facts)
        desired = desired_target(spec, facts, observed, topology)
        drift = plan(desired, facts, observed)
        originals = _originals(props, observed) or original_target(desired, facts, observed)
        return ReadResult(id_, outputs(spec, props, facts, topology, desired, originals, drift,
                                       changes=[], reboots=0))

    def delete(self, id_: str, props: dict) -> None:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        facts, observed = observe(host, spec)
        originals = _originals(props, observed)
        if originals is None:
            return  # nothing was ever changed on this host
        Run(host, spec, lambda *_: originals).converge(facts, observed, finish=[
            shell.call("vela_remove_file", ORIGINALS_FILE),
            shell.call("vela_remove_empty_dirs", *ORIGINALS_DIRS)])

    # -- converging ------------------------------------------------------------------------------

    def _converge(self, spec: HostTuningArgs, props: dict,
                  previous: dict | None = None) -> dict:
        host = self._host(spec)
        facts, observed = observe(host, spec)
        topology = _topology(host, spec, facts)
        desired = desired_target(spec, facts, observed, topology)
        problems = preflight(spec, facts, observed, topology, desired)
        if problems:
            raise HostTuningError(f"{host.name}: preflight found {len(problems)} problem(s); "
                                  f"nothing was changed:\n - " + "\n - ".join(problems))
        saved = _originals(previous or {}, observed)
        originals = merge_originals(saved.model_dump() if saved else None,
                                    original_target(desired, facts, observed))
        record = originals_record(originals)
        save = [] if observed.files.get(ORIGINALS_FILE) == record else \
            [shell.write_file(ORIGINALS_FILE, record, 0o600)]

        def target_for(new_facts: HostFacts, new_observed: Observations) -> Target:
            return desired_target(spec, new_facts, new_observed,
                                  select_topology(spec, new_facts))

        done = Run(host, spec, target_for).converge(facts, observed, extra_calls=save)
        topology = select_topology(spec, done.facts)
        desired = target_for(done.facts, done.observed)
        return outputs(spec, props, done.facts, topology, desired, originals, done.plan,
                       changes=done.changes, reboots=done.reboots)



def _topology(host: Host, spec: HostTuningArgs, facts: HostFacts) -> Topology:
    try:
        return select_topology(spec, facts)
    except SelectionError as exc:
        raise HostTuningError(f"{host.name}: {exc}") from None


def originals_record(originals: Target) -> str:
    return json.dumps(originals.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"


def _originals(props: dict, observed: Observations) -> Target | None:
    """The originals saved on the host before the first change; else those in the last
    outputs (kept there as a JSON string: Pulumi drops null values inside output objects, and
    "absent" is an original value vela must keep)."""
    if observed.originals:
        return Target.model_validate(observed.originals)
    saved = props.get("originals")
    return Target.model_validate(json.loads(saved)) if isinstance(saved, str) and saved else None


def outputs(spec: HostTuningArgs, props: dict, facts: HostFacts, topology: Topology,
            desired: Target, originals: Target, final: Plan, *, changes: list[str],
            reboots: int) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for address in topology.vfio_devices:
        group = facts.pci[address].iommu_group
        groups.setdefault(str(group), sorted(
            other for other, device in facts.pci.items() if device.iommu_group == group))
    pairs = {pair.gpu: pair for pair in topology.pairs}
    return {
        **HostTuningProvider.inputs(props),
        "gpus": [{"address": address, "vendorDevice": facts.pci[address].vendor_device,
                  "numaNode": facts.pci[address].numa_node,
                  "iommuGroup": facts.pci[address].iommu_group,
                  "switch": pairs[address].switch, "pairedNic": pairs[address].nic,
                  "acsPath": acs_path(facts, pairs[address])} for address in topology.gpus],
        "nics": [{"address": address, "vendorDevice": facts.pci[address].vendor_device,
                  "numaNode": facts.pci[address].numa_node,
                  "switch": facts.upstream_switch(address),
                  "interfaces": facts.pci[address].net,
                  "sriovTotalVfs": facts.pci[address].sriov_totalvfs}
                 for address in topology.nic_pfs],
        "iommuGroups": groups,
        "applied": _applied(desired),
        "changes": changes,
        "pendingReboot": bool(final.pending),
        "pendingReasons": final.pending,
        "reboots": reboots,
        "originals": originals_record(originals),
        "inSync": not final.changes,
        "drift": [change.summary() for change in final.changes],
    }


def _applied(desired: Target) -> dict[str, Any]:
    return {
        "kernelArgs": sorted(token for token in desired.kernel_args.values() if token),
        "vfio": sorted(address for address, driver in desired.drivers.items() if driver),
        "registers": {key: f"{register.what}={register.value:#06x}/{register.mask:#06x}"
                      for key, register in sorted(desired.registers.items())},
        "hugepages": {str(node): count for node, count in sorted(desired.hugepages.items())},
        "hugepageSizeKib": desired.hugepages_kib,
        "firmware": desired.firmware,
        "sysctls": desired.sysctls,
    }
