"""The engine stand-in (tests/support/engine.py) follows the engine's rules: proven here with
the Ledger test provider through real provider processes, before it drives the real program
against the lab (tests/lab/test_cluster_engine_lab.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.engine import Engine
from tests.support.ledger import read_journal

PROGRAM = Path(__file__).resolve().parents[1] / "support" / "ledger_program" / "__main__.py"
TOKEN = "s3cr3t-t0ken-value"


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.ledger = tmp_path / "ledger"
        self.ledger.mkdir()
        self.engine = Engine(stack="test", config={}, secret_keys=["vela:token"],
                             state_dir=tmp_path / "state", program=PROGRAM)

    def set(self, entries: list[dict], **extra: str) -> "Stack":
        self.engine.config = {"vela:entries": json.dumps(entries),
                              "vela:ledgerDir": str(self.ledger), "vela:token": TOKEN, **extra}
        return self

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
    first = stack.set(CHAIN).engine.up()
    assert first.ok, first.errors
    assert stack.calls() == [("create", "a"), ("create", "b"), ("create", "c")]
    assert stack.span("create", "a")[1] <= stack.span("create", "b")[0]
    assert first.outputs["names"] == ["a", "b", "c"]
    assert set(stack.files()) == {"a", "b", "c"}

    again = stack.engine.up()
    assert again.ok and {again.ops()[n] for n in "abc"} == {"same"}
    assert len(stack.calls()) == 3  # diff only: no create, update or delete


def test_update_and_both_kinds_of_replace(stack):
    stack.set(CHAIN).engine.up()
    changed = [dict(CHAIN[0], value="2"), dict(CHAIN[1], replaceKey="k2"),
               dict(CHAIN[2], replaceKey="k2", deleteBeforeReplace=True)]
    result = stack.set(changed).engine.up()
    assert result.ok, result.errors
    assert (result.ops()["a"], result.ops()["b"], result.ops()["c"]) == \
        ("update", "replace", "replace")
    calls = stack.calls()[3:]
    # b: the new one is created before the old one is deleted (at the end of the run);
    # c asks to be deleted first.
    assert calls.index(("create", "b")) < calls.index(("delete", "b"))
    assert calls.index(("delete", "c")) < calls.index(("create", "c"))
    assert stack.files()["a"]["value"] == "2"


def test_undeclared_resources_are_deleted_dependents_first(stack):
    stack.set(CHAIN).engine.up()
    result = stack.set(CHAIN[:1]).engine.up()
    assert result.ok and result.names("delete") == {"b", "c"}
    assert stack.span("delete", "c")[1] <= stack.span("delete", "b")[0]
    assert set(stack.files()) == {"a"}
    assert {r.name for r in stack.engine.state().values() if "dynamic" in r.type} == {"a"}


def test_a_failed_check_changes_nothing_and_keeps_the_state(stack):
    stack.set(CHAIN).engine.up()
    before = stack.engine.state_text()
    result = stack.set([dict(CHAIN[0], value="invalid")]).engine.up()
    assert not result.ok and "value: must not be 'invalid'" in result.errors[0]
    assert set(stack.files()) == {"a", "b", "c"}  # b and c were not deleted
    assert {r.name for r in stack.engine.state().values()} >= {"a", "b", "c"}
    assert len(stack.calls()) == 3 and before


def test_a_failed_create_keeps_what_finished_and_the_next_run_completes(stack):
    entries = [{"name": "ok", "value": "1"}, {"name": "bad", "value": "1", "fail": True},
               {"name": "after", "value": "1", "dependsOn": ["bad"]}]
    result = stack.set(entries).engine.up()
    assert not result.ok and "failed on purpose" in " ".join(result.errors)
    assert "ok" in {r.name for r in stack.engine.state().values()}
    assert "after" not in stack.files()

    entries[1]["fail"] = False
    result = stack.set(entries).engine.up()
    assert result.ok, result.errors
    assert (result.ops()["ok"], result.ops()["bad"], result.ops()["after"]) == \
        ("same", "create", "create")


def test_secrets_are_encrypted_in_state_and_derived_values_are_not(stack):
    result = stack.set(CHAIN).engine.up()
    text = stack.engine.state_text()
    assert TOKEN not in text and "ciphertext" in text
    # The engine re-marks outputs named like a secret input; a derived value is plain unless
    # listed in additional_secret_outputs: here tokenLength is stored in plain text.
    assert result.outputs["tokenLengths"]["a"] == len(TOKEN)
    state = stack.engine.state()  # decrypts with the passphrase
    a = next(r for r in state.values() if r.name == "a")
    assert a.outputs["token"]["value"] == TOKEN and a.outputs["tokenLength"] == len(TOKEN)


def test_parallel_steps_wait_for_one_provider_process_or_spread_over_shards(stack):
    entries = [{"name": f"slow{i}", "value": "1", "seconds": 1} for i in range(8)]
    stack.set(entries).engine.up()
    assert _most_at_once(stack, "create") == 4  # one provider process: 4 calls at a time
    stack.engine.destroy()

    stack.set([dict(e, value="2") for e in entries], **{"vela:shards": "2"}).engine.up()
    assert _most_at_once(stack, "create") == 8  # two processes: 8 at a time
    creates = [e for e in read_journal(stack.ledger) if e["op"] == "create"]
    assert len({e["pid"] for e in creates[-16:]}) == 2


def _most_at_once(stack: Stack, op: str) -> int:
    running, most = 0, 0
    journal = [e for e in read_journal(stack.ledger) if e["op"] == op]
    for entry in journal[-16:]:
        running += 1 if entry["event"] == "start" else -1
        most = max(most, running)
    return most


def test_refresh_drops_what_is_gone_and_destroy_deletes_in_order(stack):
    stack.set(CHAIN).engine.up()
    (stack.ledger / "c.json").unlink()
    refreshed = stack.engine.refresh()
    assert refreshed.ok and refreshed.names("refresh-delete") == {"c"}
    assert "c" not in {r.name for r in stack.engine.state().values()}

    destroyed = stack.engine.destroy()
    assert destroyed.ok and stack.files() == {}
    assert stack.span("delete", "b")[1] <= stack.span("delete", "a")[0]
    assert stack.engine.state() == {}


def test_moving_to_another_provider_instance_replaces(stack):
    entries = [{"name": "a", "value": "1"}, {"name": "b", "value": "1"}]
    stack.set(entries).engine.up()
    moved = stack.set(entries, **{"vela:shards": "1"}).engine.up()
    assert moved.ok, moved.errors
    assert (moved.ops()["a"], moved.ops()["b"]) == ("replace", "replace")
    again = stack.engine.up()
    assert (again.ops()["a"], again.ops()["b"]) == ("same", "same")
