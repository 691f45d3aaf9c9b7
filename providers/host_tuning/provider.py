"""The HostTuning dynamic provider: one hypervisor host made ready for near-bare-metal VMs.

Every call follows one path: parse inputs -> gather facts (one remote command) -> select
devices -> preflight -> plan (pure) -> apply only the changes (one remote command) -> reboot
when allowed and needed, gather again, finish the plan -> verify (the shared converge loop,
`providers.common.converge`). Delete plans towards the
original values saved before the first change (on the host and in the outputs) through the same
planner. The SSH private key comes from the stack config (`vela:sshPrivateKey`, a secret) via
`configure`; it is never an input and never an output.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import ReadResult

from ..common import originals as saved
from ..common.converge import Converger, Outcome, look
from ..common.dynamic import HostResourceProvider
from ..common.plan import Round, Snapshot
from ..errors import HostTuningError
from ..facts.models import HostFacts
from ..host import Host
from . import guests
from .observe import (
    ORIGINALS_DIRS,
    ORIGINALS_FILE,
    Observations,
    observe_script,
    parse_observations,
)
from .plan import Plan, plan, plan_round
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
APPLY_TIMEOUT = 1800  # bootloader regeneration and firmware writes can take minutes
HUGEPAGES_HINT = (" - even at boot the node had no room for them: huge pages need whole free, "
                  "aligned blocks of memory; ask for fewer on that node (perNode)")


class HostTuningProvider(HostResourceProvider):
    """Pickled into every HostTuning resource's state: attributes are plain data only."""

    kind = "HostTuning"
    args_model = HostTuningArgs
    error = HostTuningError
    output_keys = OUTPUT_KEYS
    replace_on = REPLACE_ON

    def drifted(self, olds: dict) -> bool:
        """Also a reboot still pending: the next run may reboot and finish."""
        return super().drifted(olds) or bool(olds.get("pendingReboot"))

    def converge(self, host: Host, spec: HostTuningArgs, props: dict,
                 previous: dict | None) -> dict:
        return converge_desired(host, spec, props, previous)

    def remove(self, host: Host, spec: HostTuningArgs, props: dict) -> None:
        restore_originals(host, spec, props)

    def resource_id(self, spec: HostTuningArgs, outputs: dict) -> str:
        return f"{spec.address}:{spec.port}"

    def read(self, id_: str, props: dict) -> ReadResult:
        spec = self.parse_inputs(props)
        host = self._host(spec)
        now = observe(host, spec)
        topology = _topology(host, spec, now.facts)
        desired = desired_target(spec, now.facts, now.observed, topology)
        drift = plan(desired, now.facts, now.observed)
        found = _originals(host, props, now.observed) or original_target(
            desired, now.facts, now.observed)
        return ReadResult(id_, outputs(spec, props, now, topology, desired, found, drift,
                                       changes=[], reboots=0))


# -- converging ------------------------------------------------------------------------------

def observe(host: Host, spec: HostTuningArgs) -> Snapshot[Observations]:
    """Hardware facts and HostTuning's observations, from one remote command."""
    return look(host, observe_script(spec), parse_observations)


def converger(host: Host, spec: HostTuningArgs, target_for,
              check=None) -> Converger[Observations]:
    """The shared converge loop, planning towards `target_for(snapshot)`; `check` is the
    preflight run again after each reboot."""
    return Converger(host=host, look=lambda: observe(host, spec),
                     plan_for=lambda now, at: plan_round(target_for(now), now, at),
                     error=HostTuningError, apply_timeout=APPLY_TIMEOUT, reboots=spec.reboot,
                     reboot_timeout=spec.reboot_timeout, hints={"hugepages": HUGEPAGES_HINT},
                     check=check,
                     before_reboot=lambda now, pending: guests.before_reboot(
                         host, spec, now.observed, pending.pending),
                     after_reboot=lambda stopped: guests.start_guests(host, stopped))


def converge_desired(host: Host, spec: HostTuningArgs, props: dict,
                     previous: dict | None = None) -> dict[str, Any]:
    """Create and update: preflight, save the originals, converge, and the outputs."""
    now = observe(host, spec)
    topology = _topology(host, spec, now.facts)
    desired = desired_target(spec, now.facts, now.observed, topology)
    problems = preflight(spec, now.facts, now.observed, topology, desired)
    if problems:
        raise HostTuningError(f"{host.name}: preflight found {len(problems)} problem(s); "
                              f"nothing was changed:\n - " + "\n - ".join(problems))
    first = plan_round(desired, now, Round(booted=False, number=0))
    if first.reboots_required:
        refusal = guests.reboot_refusal(host.name, spec, now.observed, first.pending)
        if refusal:
            raise HostTuningError(refusal)
    found = _originals(host, previous or {}, now.observed)
    originals = merge_originals(found.model_dump() if found else None,
                                original_target(desired, now.facts, now.observed))

    def target_for(snapshot: Snapshot[Observations]) -> Target:
        return desired_target(spec, snapshot.facts, snapshot.observed,
                              _topology(host, spec, snapshot.facts))

    def check(snapshot: Snapshot[Observations]) -> list[str]:
        topology = _topology(host, spec, snapshot.facts)
        return preflight(spec, snapshot.facts, snapshot.observed, topology,
                         desired_target(spec, snapshot.facts, snapshot.observed, topology))

    done = converger(host, spec, target_for, check).converge(
        now, first=saved.save_calls(ORIGINALS_FILE, originals,
                                    now.observed.files.get(ORIGINALS_FILE)))
    topology = _topology(host, spec, done.snapshot.facts)
    return outputs(spec, props, done.snapshot, topology, target_for(done.snapshot), originals,
                   done.plan, changes=done.changes, reboots=done.reboots)


def restore_originals(host: Host, spec: HostTuningArgs, props: dict) -> Outcome | None:
    """Delete: converge back to the originals saved before the first change, then remove the
    record. None when nothing was ever changed on this host."""
    now = observe(host, spec)
    originals = _originals(host, props, now.observed)
    if originals is None:
        return None
    return converger(host, spec, lambda _: originals).converge(
        now, finish=saved.removal_calls(ORIGINALS_FILE, ORIGINALS_DIRS))


def _topology(host: Host, spec: HostTuningArgs, facts: HostFacts) -> Topology:
    try:
        return select_topology(spec, facts)
    except SelectionError as exc:
        raise HostTuningError(f"{host.name}: {exc}") from None


def _originals(host: Host, props: dict, observed: Observations) -> Target | None:
    return saved.load(Target, observed.files.get(ORIGINALS_FILE), props, host=host.name,
                      path=ORIGINALS_FILE, error=HostTuningError)


def outputs(spec: HostTuningArgs, props: dict, now: Snapshot[Observations],
            topology: Topology, desired: Target, originals: Target, final: Plan, *,
            changes: list[str], reboots: int) -> dict[str, Any]:
    facts = now.facts
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
        "pendingReasons": final.reasons(),
        "reboots": reboots,
        "originals": saved.record(originals),
        "inSync": not final.changes,
        "drift": final.summaries(),
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
