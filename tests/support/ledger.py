"""Ledger: a small dynamic provider for testing the Pulumi engine's rules, not a product resource.

Each resource is a JSON file `NAME.json` in a directory given by provider config
(`vela:ledgerDir`); every call is appended to `journal` in that directory (start and end, with
time and process id), so a test can see what the engine called, in which order, how many at once
and from which provider process. `seconds` makes create, update and delete take that long, like a
host that reboots. Changing `replaceKey` asks for a replacement (so does changing `value`, with
`replaceOnValue`); a `value` of "invalid" fails check; `fail` makes create raise.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

INPUT_KEYS = ("name", "value", "replaceKey", "replaceOnValue", "seconds", "token", "fail")


class LedgerProvider(ResourceProvider):
    def configure(self, req) -> None:
        self.directory = Path(req.config.require("ledgerDir"))

    def check(self, olds: dict, news: dict) -> CheckResult:
        failures = [CheckFailure("value", "must not be 'invalid'")] \
            if news.get("value") == "invalid" else []
        return CheckResult(news, failures)

    def diff(self, id_: str, olds: dict, news: dict) -> DiffResult:
        changed = [key for key in INPUT_KEYS if olds.get(key) != news.get(key)]
        replace_on = {"replaceKey", "value"} if news.get("replaceOnValue") else {"replaceKey"}
        return DiffResult(changes=bool(changed),
                          replaces=[key for key in changed if key in replace_on])

    def create(self, props: dict) -> CreateResult:
        with self._call("create", props["name"]):
            if props.get("fail"):
                raise RuntimeError(f"{props['name']}: failed on purpose")
            self._write(props)
        return CreateResult(f"{props['name']}-{time.time_ns()}", self._outputs(props))

    def update(self, id_: str, olds: dict, news: dict) -> UpdateResult:
        with self._call("update", news["name"]):
            self._write(news)
        return UpdateResult(self._outputs(news))

    def delete(self, id_: str, props: dict) -> None:
        with self._call("delete", props["name"]):
            (self.directory / f"{props['name']}.json").unlink(missing_ok=True)

    def read(self, id_: str, props: dict) -> ReadResult:
        path = self.directory / f"{props['name']}.json"
        if not path.exists():
            return ReadResult("", {})
        return ReadResult(id_, {**props, **json.loads(path.read_text())})

    # -- helpers ---------------------------------------------------------------------------------

    def _outputs(self, props: dict) -> dict:
        return {**{key: props[key] for key in INPUT_KEYS if key in props},
                "tokenLength": len(props.get("token") or "")}

    def _write(self, props: dict) -> None:
        time.sleep(float(props.get("seconds") or 0))
        record = {key: props[key] for key in INPUT_KEYS if key in props}
        (self.directory / f"{props['name']}.json").write_text(json.dumps(record))

    def _call(self, op: str, name: str):
        provider = self

        class Journal:
            def __enter__(self):
                provider._journal("start", op, name)

            def __exit__(self, *exc_info):
                provider._journal("end", op, name)

        return Journal()

    def _journal(self, event: str, op: str, name: str) -> None:
        with open(self.directory / "journal", "a") as journal:
            fcntl.flock(journal, fcntl.LOCK_EX)
            journal.write(json.dumps({"event": event, "op": op, "name": name,
                                      "time": time.time(), "pid": os.getpid()}) + "\n")


class Ledger(Resource):
    def __init__(self, name: str, props: dict, opts=None) -> None:
        super().__init__(LedgerProvider(), name, {"tokenLength": None, **props}, opts)


def read_journal(directory: Path) -> list[dict]:
    path = directory / "journal"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
