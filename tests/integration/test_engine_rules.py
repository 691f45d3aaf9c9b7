"""The Pulumi engine's rules that vela relies on, proven on the real engine (the CLI that
scripts/setup builds) with the Ledger test provider (tests/support/ledger.py): dependency order,
nothing done twice, update and both kinds of replace, dependents replaced before a
delete-before-replace, deletes in reverse dependency order, a failure keeps the state, secrets
encrypted in state, 4 calls at a time per provider process, refresh and destroy.

These are the facts the product's design stands on (VelaCluster's depends_on chain, GpuVm and
SriovPool asking for delete-before-replace, the SSH key as secret config, provider shards). The
lab test (tests/integration/test_pulumi_cli.py) shows them with the real resources.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from pulumi import automation as auto

from tests.support.cli import CliStack, Run
from tests.support.ledger import read_journal

PROGRAM = Path(__file__).resolve().parents[1] / "support" / "ledger_program" / "__main__.py"
TOKEN = "s3cr3t-t0ken-value"


def _ledger_program() -> None:
    runpy.run_path(str(PROGRAM))


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.ledger = tmp_path / "ledger"
        self.ledger.mkdir()
        self.cli = CliStack(tmp_path, "test", program=_ledger_program,
                            packages=["providers", "tests"])

    def set(self, entries: list[dict], **extra: str) -> Stack:
        self.cli.configure({"vela:entries": json.dumps(entries),
                           "vela:ledgerDir": str(self.ledger), "vela:token": TOKEN, **extra},
                           secret_keys=("vela:token",))
        return self

    def up(self, **options) -> Run:
        return self.cli.up(**options)

    def names(self) -> set[str]:
        return self.cli.vela_resources()

    def files(self) -> dict[str, dict]:
        return {path.stem: json.loads(path.read_text()) for path in self.ledger.glob("*.json")}

    def calls(self) -> list[tuple[str, str]]:
        return [(entry["op"], entry["name"]) for entry in read_journal(self.ledger)
                if entry["event"] == "start"]

    def span(self, op: str, name: str) -> tuple[float, float]:
        journal = read_journal(self.ledger)
        times = [e["time"] for e in journal if e["op"] == op and e["name"] == name]
        return times[0], times[-1]


@pytest.fixture
def stack(tmp_path) -> Stack:
    return Stack(tmp_path)


CHAIN = [{"name": "a", "value": "1"}, {"name": "b", "value": "1", "dependsOn": ["a"]},
         {"name": "c", "value": "1", "dependsOn": ["b"]}]


def test_up_creates_in_dependency_order_then_changes_nothing(stack):
    first = stack.set(CHAIN).up()
    assert stack.calls() == [("create", "a"), ("create", "b"), ("create", "c")]
    assert stack.span("create", "a")[1] <= stack.span("create", "b")[0]
    assert first.outputs["names"] == ["a", "b", "c"]
    assert set(stack.files()) == {"a", "b", "c"}

    again = stack.up()
    assert {again.ops()[n] for n in "abc"} == {"same"}
    assert len(stack.calls()) == 3  # diff only: no create, update or delete


def test_update_and_both_kinds_of_replace(stack):
    stack.set(CHAIN).up()
    changed = [dict(CHAIN[0], value="2"), dict(CHAIN[1], replaceKey="k2"),
               dict(CHAIN[2], replaceKey="k2", deleteBeforeReplace=True)]
    result = stack.set(changed).up()
    assert (result.ops()["a"], result.ops()["b"], result.ops()["c"]) == \
        ("update", "replace", "replace")
    assert result.before(("b", "create-replacement"), ("b", "delete-replaced"))
    assert result.before(("c", "delete-replaced"), ("c", "create-replacement"))
    calls = stack.calls()[3:]
    # b: the new one is created before the old one is deleted (at the end of the run);
    # c asks to be deleted first.
    assert calls.index(("create", "b")) < calls.index(("delete", "b"))
    assert calls.index(("delete", "c")) < calls.index(("create", "c"))
    assert stack.files()["a"]["value"] == "2"


def test_a_delete_before_replace_replaces_its_dependents_first(stack):
    """What SriovPool and GpuVm rely on: a VM takes a pool's VFs (a property dependency) and is
    replaced when they change; replacing the pool delete-first deletes the VM before it."""
    entries = [{"name": "pool", "value": "1", "replaceKey": "k1"},
               {"name": "vm", "valueFrom": "pool", "replaceOnValue": True,
                "dependsOn": ["pool"]},
               {"name": "bystander", "value": "1", "dependsOn": ["pool"]}]
    stack.set(entries).up()
    entries[0] = dict(entries[0], replaceKey="k2", deleteBeforeReplace=True)
    preview = stack.set(entries).cli.preview()
    assert preview.ops(changed_only=True) == {"pool": "replace", "vm": "replace"}
    result = stack.up()
    assert result.ops(changed_only=True) == {"pool": "replace", "vm": "replace"}
    calls = stack.calls()[3:]
    assert calls == [("delete", "vm"), ("delete", "pool"), ("create", "pool"), ("create", "vm")]
    assert result.ops()["bystander"] == "same"  # depends_on alone: not replaced


def test_undeclared_resources_are_deleted_dependents_first(stack):
    stack.set(CHAIN).up()
    result = stack.set(CHAIN[:1]).up()
    assert result.ops(changed_only=True) == {"b": "delete", "c": "delete"}
    assert stack.span("delete", "c")[1] <= stack.span("delete", "b")[0]
    assert set(stack.files()) == {"a"}
    assert stack.names() == {"a"}


def test_a_failed_check_changes_nothing_and_keeps_the_state(stack):
    stack.set(CHAIN).up()
    with pytest.raises(auto.errors.CommandError, match="has a problem: must not be 'invalid'"):
        stack.set([dict(CHAIN[0], value="invalid")]).up()
    assert set(stack.files()) == {"a", "b", "c"}  # b and c were not deleted
    assert stack.names() == {"a", "b", "c"}
    assert len(stack.calls()) == 3


def test_a_failed_create_keeps_what_finished_and_the_next_run_completes(stack):
    entries = [{"name": "ok", "value": "1"}, {"name": "bad", "value": "1", "fail": True},
               {"name": "after", "value": "1", "dependsOn": ["bad"]}]
    with pytest.raises(auto.errors.CommandError, match="failed on purpose"):
        stack.set(entries).up()
    assert "ok" in stack.names()
    assert "after" not in stack.files()

    entries[1]["fail"] = False
    result = stack.set(entries).up()
    assert (result.ops()["ok"], result.ops()["bad"], result.ops()["after"]) == \
        ("same", "create", "create")


def test_secrets_are_encrypted_in_state_and_derived_values_are_not(stack):
    result = stack.set(CHAIN).up()
    text = stack.cli.state_text()
    assert TOKEN not in text and "ciphertext" in text
    # The engine re-marks outputs named like a secret input; a derived value is plain unless
    # listed in additional_secret_outputs: here tokenLength is stored in plain text.
    assert result.outputs["tokenLengths"]["a"] == len(TOKEN)
    a = next(r for r in stack.cli.resources() if r["urn"].endswith("::a"))
    assert "ciphertext" in json.dumps(a["outputs"]["token"])
    assert a["outputs"]["tokenLength"] == len(TOKEN)


def test_parallel_steps_wait_for_one_provider_process_or_spread_over_shards(stack):
    """One dynamic provider process runs 4 calls at once; two run 8. The engine itself runs at
    most `--parallel` steps at once (default 4 per CPU core of the machine running it: 8 here),
    so the test raises it to see the providers' own limit."""
    entries = [{"name": f"slow{i}", "value": "1", "seconds": 1} for i in range(12)]
    stack.set(entries).up(parallel=32)
    assert _most_at_once(stack, "create", 12) == 4  # one provider process: 4 calls at a time
    stack.cli.destroy()

    stack.set([dict(e, value="2") for e in entries], **{"vela:shards": "3"}).up(parallel=32)
    assert _most_at_once(stack, "create", 12) == 12  # three processes: 12 at a time
    creates = [e for e in read_journal(stack.ledger) if e["op"] == "create"]
    assert len({e["pid"] for e in creates[-24:]}) == 3

    stack.cli.destroy()
    stack.set(entries, **{"vela:shards": "3"}).up(parallel=2)
    assert _most_at_once(stack, "create", 12) == 2  # the engine's limit


def _most_at_once(stack: Stack, op: str, calls: int) -> int:
    """The most `op` calls running at once among the last `calls` of them."""
    running, most = 0, 0
    journal = [e for e in read_journal(stack.ledger) if e["op"] == op]
    for entry in journal[-2 * calls:]:
        running += 1 if entry["event"] == "start" else -1
        most = max(most, running)
    return most


def test_refresh_drops_what_is_gone_and_destroy_deletes_in_order(stack):
    stack.set(CHAIN).up()
    (stack.ledger / "c.json").unlink()
    refreshed = stack.cli.refresh()
    assert refreshed.changes.get("delete") == 1, refreshed.changes
    assert stack.names() == {"a", "b"}

    destroyed = stack.cli.destroy()
    assert destroyed.ops() == {"a": "delete", "b": "delete"}
    assert stack.files() == {}
    assert stack.span("delete", "b")[1] <= stack.span("delete", "a")[0]
    assert stack.cli.resources() == []


def test_moving_to_another_provider_instance_changes_nothing_but_the_reference(stack):
    """Changing `vela:providerShards` moves resources between dynamic provider instances: the
    engine asks the new provider for a config diff (none: dynamic providers have no config to
    compare), so nothing is replaced, and the state then names the new provider."""
    entries = [{"name": "a", "value": "1"}, {"name": "b", "value": "1"}]
    stack.set(entries).up()
    moved = stack.set(entries, **{"vela:shards": "1"}).up()
    assert moved.ops() == {"a": "same", "b": "same"}
    assert len(stack.calls()) == 2  # the two creates: no call for the move
    providers = {r["urn"].rsplit("::", 1)[-1]: r.get("provider", "")
                 for r in stack.cli.resources() if r["urn"].endswith(("::a", "::b"))}
    assert all("::shard0::" in provider for provider in providers.values()), providers
    again = stack.set([dict(e, value="2") for e in entries], **{"vela:shards": "1"}).up()
    assert again.ops() == {"a": "update", "b": "update"}
