"""A VF count change (or a pool's delete) waits a while for the guests that hold its VFs: the
engine may delete the guests at the same moment as the pool (replacing two pools and the two
VMs that take VFs from both, it runs the pools' delete-before-replace chains side by side, as
the dev stack's lab test saw). Past `releaseTimeout` the plan refuses as before."""

from __future__ import annotations

from types import SimpleNamespace

from providers.sriov_pool import provider
from providers.sriov_pool.spec import SriovPoolArgs

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _spec(**values) -> SriovPoolArgs:
    return SriovPoolArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                         "pf": "ens1f0", "numVfs": 2, **values})


def _world(monkeypatch, holders: list[dict]):
    """Each look at the host: who holds the VFs then (the last answer repeats)."""
    looks = iter(range(len(holders) * 100))
    state = {"look": 0}

    def observe(host, spec):
        state["look"] = next(looks) + 1
        return SimpleNamespace(facts=None, observed=state["look"])

    monkeypatch.setattr(provider, "observe", observe)
    monkeypatch.setattr(provider, "find_pf", lambda spec, facts, observed: None)
    monkeypatch.setattr(provider, "vf_users", lambda observed, pf, target: holders[
        min(observed if isinstance(observed, int) else 0, len(holders) - 1)])
    monkeypatch.setattr(provider.time, "sleep", lambda seconds: None)
    return state


def test_the_count_change_goes_on_once_the_guest_let_go(monkeypatch):
    state = _world(monkeypatch, [{"vm1": ["0000:85:10.0"]}, {"vm1": ["0000:85:10.0"]}, {}])
    now = provider.released(None, _spec(), SimpleNamespace(facts=None, observed=0),
                            lambda *_: None)
    assert now.observed == 2 and state["look"] == 2  # looked again twice, then went on


def test_without_time_to_wait_the_plan_refuses_at_once(monkeypatch):
    state = _world(monkeypatch, [{"vm1": ["0000:85:10.0"]}])
    first = SimpleNamespace(facts=None, observed=0)
    assert provider.released(None, _spec(releaseTimeout=0), first, lambda *_: None) is first
    assert state["look"] == 0
