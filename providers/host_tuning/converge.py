"""Driving a host to a target: apply, reboot when allowed and needed, repeat, verify.

One `Run` per create/update/delete. Each round applies the whole plan in one remote command,
reads the host again (one more), and re-plans; a reboot happens only when something configured
waits for one, rebooting is allowed, and the last reboot made progress. What is still to change
at the end did not take, and is an error that says so.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from ..common import shell
from ..errors import VelaError
from ..facts import parse_facts, run_gather
from ..facts.models import HostFacts
from ..host import CommandResult, Host
from ..host.reboot import reboot_and_wait
from .observe import Observations, observe_script, parse_observations
from .plan import Plan, plan
from .spec import HostTuningArgs
from .target import Target

MAX_REBOOTS = 3
HUGEPAGES_HINT = (" - even at boot the node had no room for them: huge pages need whole free, "
                  "aligned blocks of memory; ask for fewer on that node (perNode)")


class HostTuningError(VelaError):
    """HostTuning could not do what was asked; the message says what and what to do."""


def observe(host: Host, spec: HostTuningArgs) -> tuple[HostFacts, Observations]:
    """Hardware facts and HostTuning's observations, from one remote command."""
    text = run_gather(host, observe_script(spec))
    return parse_facts(host, text), parse_observations(text)


@dataclass
class Outcome:
    facts: HostFacts
    observed: Observations
    plan: Plan
    changes: list[str] = field(default_factory=list)
    reboots: int = 0


@dataclass
class Run:
    host: Host
    spec: HostTuningArgs
    target_for: Callable[[HostFacts, Observations], Target]
    reboot: Callable[[Host, float], object] = reboot_and_wait
    on_applied: Callable[[CommandResult], None] = lambda result: None

    def converge(self, facts: HostFacts, observed: Observations, *,
                 extra_calls: list[str] = (), finish: list[str] = ()) -> Outcome:
        outcome = Outcome(facts, observed, self._plan(facts, observed, booted=False))
        pending_calls = list(extra_calls)
        stalled: list[str] | None = None  # left pending by a reboot that had nothing to apply
        while True:
            calls = pending_calls + [call for change in outcome.plan.changes
                                     for call in change.calls]
            pending_calls = []
            if calls:
                self._apply(calls)
                outcome.changes += [change.summary() for change in outcome.plan.changes]
                self._refresh(outcome, booted=outcome.reboots > 0)
            current = outcome.plan
            if current.reboots_required and self.spec.reboot == "allowed" \
                    and outcome.reboots < MAX_REBOOTS and current.pending != stalled:
                stalled = current.pending if not current.changes else None
                self.reboot(self.host, self.spec.reboot_timeout)
                outcome.reboots += 1
                self._refresh(outcome, booted=True)
                continue
            break
        self._verify(outcome)
        if finish:
            self._apply(list(finish))
        return outcome

    def _apply(self, calls: list[str]) -> None:
        preamble = "" if self.host.sysroot == "/" else f"R={shlex.quote(self.host.sysroot)}\n"
        self.on_applied(self.host.run_script(shell.script(calls, preamble=preamble),
                                             timeout=1800))

    def _refresh(self, outcome: Outcome, *, booted: bool) -> None:
        outcome.facts, outcome.observed = observe(self.host, self.spec)
        outcome.plan = self._plan(outcome.facts, outcome.observed, booted=booted)

    def _plan(self, facts: HostFacts, observed: Observations, *, booted: bool) -> Plan:
        return short_hugepages_wait_for_boot(
            plan(self.target_for(facts, observed), facts, observed), booted=booted)

    def _verify(self, outcome: Outcome) -> None:
        """Anything still to change did not take. Waiting for a reboot is fine only when
        rebooting is not allowed (the outputs report it as pending)."""
        final = outcome.plan
        stuck = list(final.changes)
        if self.spec.reboot == "never":
            stuck = [change for change in stuck if change.phase == "runtime"]
        problems = [change.summary() + (HUGEPAGES_HINT if change.kind == "hugepages" else "")
                    for change in stuck]
        if self.spec.reboot == "allowed" and final.pending:
            problems += [f"still pending after {outcome.reboots} reboot(s): {reason}"
                         for reason in final.pending]
        if problems:
            raise HostTuningError(f"{self.host.name}: these settings did not take:\n - "
                                  + "\n - ".join(problems))


def short_hugepages_wait_for_boot(current: Plan, booted: bool) -> Plan:
    """A pool still short after writing nr_hugepages means memory is too fragmented to allocate
    at run time: the command line reserves the pages at the next boot. Short after a boot with
    that command line already active, the node has no room: left as a change, so it fails."""
    short = [change for change in current.changes if change.kind == "hugepages"]
    args_pending = any("kernel command line" in reason for reason in current.pending)
    if not short or (booted and not args_pending):
        return current
    reasons = [f"huge pages {change.subject}: {change.detail} could not be allocated at run "
               f"time; the kernel command line reserves them at the next boot" for change in short]
    return current.model_copy(update={
        "changes": [change for change in current.changes if change.kind != "hugepages"],
        "pending": current.pending + reasons,
        "reboots_required": max(current.reboots_required, 1)})
