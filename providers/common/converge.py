"""Driving a host to a target: the one converge loop all three resources use.

A round applies the whole plan in one remote command, reads the host again (one more) and
plans again; rounds repeat while they make progress (a VF count change brings new VFs to set
up). A reboot happens only when something configured waits for one, the resource's policy
allows it, and the last reboot made progress. What is still to change at the end did not take,
and is an error that names the host and each setting.

Each step is reported as it happens (`progress`: facts read, the plan, each round applied,
each reboot and the wait for it, verified), so `pulumi up` shows where a long run is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal

from ..errors import VelaError
from ..facts import parse_facts, run_gather
from ..host import Host
from ..host.reboot import reboot_and_wait
from . import progress, shell
from .plan import O, Plan, Round, Snapshot

MAX_REBOOTS = 3
# Per boot: a count change, then the new functions' settings, then a margin for a change that
# did not take at once (a driver still probing); a plan seen a third time is stuck.
APPLY_ROUNDS = 4
SAME_PLAN_RETRIES = 1


def look(host: Host, script: str, parse: Callable[[str], O]) -> Snapshot[O]:
    """The facts and a resource's observations (`script`: its gather sections), in one
    remote command."""
    progress.begin("reading the host")
    started = time.monotonic()
    text = run_gather(host, script)
    snapshot = Snapshot(parse_facts(host, text), parse(text))
    progress.report("facts read", f"{len(snapshot.facts.pci)} PCI functions, "
                                  f"{len(snapshot.facts.numa_nodes)} NUMA node(s) in "
                                  f"{time.monotonic() - started:.1f} s")
    return snapshot


def apply(host: Host, calls: list[str], *, timeout: float) -> None:
    """Run `calls` against the host's root in one remote command."""
    host.run_script(shell.script(calls, sysroot=host.sysroot), timeout=timeout)


@dataclass
class Outcome(Generic[O]):
    snapshot: Snapshot[O]
    plan: Plan
    changes: list[str] = field(default_factory=list)
    reboots: int = 0


@dataclass
class Converger(Generic[O]):
    """One resource's converge run. `plan_for` is the resource's pure planner towards its
    target; `reboots` is its policy ("never" for resources that take effect at once)."""

    host: Host
    look: Callable[[], Snapshot[O]]
    plan_for: Callable[[Snapshot[O], Round], Plan]
    error: type[VelaError]
    apply_timeout: float
    reboots: Literal["allowed", "never"] = "never"
    reboot_timeout: float = 900.0
    hints: dict[str, str] = field(default_factory=dict)  # change kind -> what to tell the user
    # The resource's preflight, run again after each reboot: a boot can bring what no run
    # could see before it (an IOMMU the BIOS keeps off even when the kernel asks for it).
    check: Callable[[Snapshot[O]], list[str]] | None = None
    # Around each reboot: make the host safe to reboot (guests stopped, or refuse), and bring
    # back what was stopped once it is up again.
    before_reboot: Callable[[Snapshot[O], Plan], object] | None = None
    after_reboot: Callable[[object], None] | None = None

    def converge(self, snapshot: Snapshot[O], *, first: list[str] = (),
                 finish: list[str] = ()) -> Outcome[O]:
        """Apply `first` and the plan, reboot when needed and allowed, verify, then run
        `finish` (clean-up that must happen only once the target is reached)."""
        outcome = Outcome(snapshot, self.plan_for(snapshot, Round(booted=False, number=0)))
        progress.report("plan", _plan_summary(outcome.plan))
        self._apply_rounds(outcome, list(first))
        stalled = None  # what a reboot that had nothing to apply left pending
        while self._reboot_wanted(outcome, stalled):
            stalled = outcome.plan.pending if not outcome.plan.changes else None
            stopped = self.before_reboot(outcome.snapshot, outcome.plan) \
                if self.before_reboot else None
            try:
                progress.report(f"rebooting ({outcome.reboots + 1} of at most {MAX_REBOOTS})",
                                f"for {progress.listing(outcome.plan.reasons())}; waiting up "
                                f"to {self.reboot_timeout:g} s for it to answer again")
                reboot_and_wait(self.host, self.reboot_timeout,
                                progress=lambda line: progress.report(
                                    "rebooting", line.removeprefix(f"{self.host.name}: ")))
                outcome.reboots += 1
                self._refresh(outcome, number=0)
                progress.report(f"plan after reboot {outcome.reboots}",
                                _plan_summary(outcome.plan))
                self._check_after_boot(outcome)
                self._apply_rounds(outcome, [])
            finally:  # what was stopped comes back even when the boot's apply failed
                if self.after_reboot:
                    self.after_reboot(stopped)
            if stopped:  # what came back is running again: the next reboot must see it
                self._refresh(outcome, number=1)
        progress.begin("verifying")
        self._verify(outcome)
        if finish:
            progress.begin("cleaning up")
            apply(self.host, list(finish), timeout=self.apply_timeout)
        progress.report("verified", _done_summary(outcome, self.reboots))
        return outcome

    def _apply_rounds(self, outcome: Outcome[O], first: list[str]) -> None:
        calls = first + outcome.plan.calls
        retries = SAME_PLAN_RETRIES
        for number in range(1, APPLY_ROUNDS + 1):
            if not calls:
                return
            made = outcome.plan.summaries()
            if made:
                progress.report(f"applying {len(made)} change(s), round {number}",
                                progress.listing(made))
            else:
                progress.report(f"applying round {number}", "vela's own records only")
            started = time.monotonic()
            apply(self.host, calls, timeout=self.apply_timeout)
            took = time.monotonic() - started
            outcome.changes += [summary for summary in made if summary not in outcome.changes]
            self._refresh(outcome, number=number)
            progress.report(f"round {number} applied in {took:.1f} s",
                            f"now {_plan_summary(outcome.plan)}")
            if outcome.plan.summaries() == made:
                if not retries:
                    return  # the same changes again: they did not take, and verify says so
                retries -= 1
            calls = outcome.plan.calls

    def _check_after_boot(self, outcome: Outcome[O]) -> None:
        problems = self.check(outcome.snapshot) if self.check else []
        if problems:
            raise self.error(f"{self.host.name}: after reboot {outcome.reboots}, preflight "
                             f"found {len(problems)} problem(s); nothing more was changed:\n - "
                             + "\n - ".join(problems))

    def _refresh(self, outcome: Outcome[O], *, number: int) -> None:
        outcome.snapshot = self.look()
        outcome.plan = self.plan_for(outcome.snapshot,
                                     Round(booted=outcome.reboots > 0, number=number))

    def _reboot_wanted(self, outcome: Outcome[O], stalled) -> bool:
        current = outcome.plan
        return bool(current.reboots_required) and self.reboots == "allowed" \
            and outcome.reboots < MAX_REBOOTS and current.pending != stalled

    def _verify(self, outcome: Outcome[O]) -> None:
        """Anything still to change did not take. Waiting for a reboot is fine only when
        rebooting is not allowed (the outputs report it as pending)."""
        final = outcome.plan
        stuck = list(final.changes)
        if self.reboots == "never":
            stuck = [change for change in stuck if change.effect == "runtime"]
        problems = [change.summary() + self.hints.get(change.kind, "") for change in stuck]
        if self.reboots == "allowed":
            problems += [f"still pending after {outcome.reboots} reboot(s): {reason}"
                         for reason in final.reasons()]
        if problems:
            raise self.error(f"{self.host.name}: these settings did not take:\n - "
                             + "\n - ".join(problems))


def _plan_summary(plan: Plan) -> str:
    """A plan in one line, for progress."""
    if not plan.changes and not plan.pending:
        return "nothing to change"
    parts = [f"{len(plan.changes)} change(s)"] if plan.changes else ["no change"]
    if plan.pending:
        parts.append(f"waiting for a reboot: {progress.listing(plan.reasons(), 2)}")
    return ", ".join(parts)


def _done_summary(outcome: Outcome, reboots: str) -> str:
    """What a converge run did, in one line, for progress."""
    done = f"{len(outcome.changes)} change(s) made, {outcome.reboots} reboot(s)"
    if outcome.plan.pending and reboots == "never":
        done += f"; waiting for a reboot: {progress.listing(outcome.plan.reasons(), 2)}"
    return done
