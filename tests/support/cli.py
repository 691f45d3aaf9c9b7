"""The real Pulumi engine for tests: a stack driven through `components.runner` (the Automation
API, inline), with every engine event recorded so a test can read what the engine decided.

`CliStack.up()` and friends return a `Run`: per resource, the steps the engine took (op, and the
sequence numbers of the events that began and ended each step, which order steps in time), the
outputs, and the engine's own change summary. The state is the backend's files on disk, so a
test can scan exactly what a user's state would hold.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.runner import PROJECT_ROOT, cli_environment, select_stack

PASSPHRASE = "vela-test-passphrase"
PROJECT_FILES = ["Pulumi.yaml", "__main__.py", "requirements.txt"]
PROJECT_PACKAGES = ["providers", "components"]


def require_cli() -> str:
    """The `pulumi` the tests run; a clear failure (never a skip) when setup did not install it."""
    path = shutil.which("pulumi", path=cli_environment()["PATH"])
    if path is None:
        raise AssertionError("the Pulumi CLI is not in .venv/bin: run scripts/setup "
                             "(it builds the pinned CLI, see README 'The Pulumi CLI')")
    return path


def project_copy(directory: Path, packages: list[str] = PROJECT_PACKAGES) -> Path:
    """The project's program and `packages` in `directory`, so stack files stay out of the
    checkout. The CLI runs there, and so does the provider plugin (it imports the providers'
    modules from there)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy(PROJECT_ROOT / name, directory / name)
    for package in packages:
        shutil.copytree(PROJECT_ROOT / package, directory / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return directory


@dataclass
class Step:
    op: str
    began: int  # sequence number of the engine's ResourcePreEvent
    ended: int | None = None  # of its ResOutputsEvent (None: failed or never finished)
    began_at: float = 0.0  # when this process saw those events (time.monotonic())
    ended_at: float | None = None

    @property
    def seconds(self) -> float:
        return (self.ended_at or self.began_at) - self.began_at


@dataclass
class Run:
    steps: dict[str, list[Step]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole command, wall time

    def ops(self, *, changed_only: bool = False) -> dict[str, str]:
        """Resource name -> what the engine did to it ("create", "same", "update", "delete", or
        "replace" for the steps of a replacement), for the program's dynamic resources (not the
        stack, components or providers)."""
        ops = {name: "replace" if any(s.op == "replace" for s in steps) else steps[-1].op
               for name, steps in self.steps.items()}
        return {name: op for name, op in ops.items() if not changed_only or op != "same"}

    def step(self, name: str, op: str) -> Step:
        return next(step for step in self.steps[name] if step.op == op)

    def before(self, first: tuple[str, str], then: tuple[str, str]) -> bool:
        """The engine finished step `first` (name, op) before it began step `then`."""
        return self.step(*first).ended < self.step(*then).began


class Recorder:
    """An `on_event` callback: the engine's step events, by resource name."""

    def __init__(self) -> None:
        self.run = Run()
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], Step] = {}

    def __call__(self, event) -> None:
        with self._lock:
            if event.resource_pre_event:
                self._began(event.sequence, event.resource_pre_event.metadata)
            elif event.res_outputs_event:
                meta = event.res_outputs_event.metadata
                step = self._open.pop((meta.urn, _op(meta)), None)
                if step is not None:
                    step.ended, step.ended_at = event.sequence, time.monotonic()
            elif event.diagnostic_event and event.diagnostic_event.severity == "error":
                self.run.diagnostics.append(event.diagnostic_event.message)

    def _began(self, sequence: int, meta) -> None:
        if not _is_vela_resource(meta.type):
            return
        step = Step(_op(meta), sequence, began_at=time.monotonic())
        self.run.steps.setdefault(meta.urn.rsplit("::", 1)[-1], []).append(step)
        self._open[(meta.urn, step.op)] = step


def _op(meta) -> str:
    return getattr(meta.op, "value", meta.op)


def _is_vela_resource(type_: str) -> bool:
    return type_.startswith("pulumi-python:dynamic")


class CliStack:
    """One stack of the vela project on a local file backend, through the real CLI."""

    def __init__(self, directory: Path, name: str = "dev", *,
                 program: Callable[[], object] | None = None,
                 packages: list[str] = PROJECT_PACKAGES) -> None:
        """`program`: the vela program unless given; `packages`: what the provider plugin must
        import (the modules of the pickled providers)."""
        require_cli()
        self.state_dir = directory / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = project_copy(directory / "project", packages)
        env = {"PULUMI_BACKEND_URL": f"file://{self.state_dir}",
               "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
               "PULUMI_HOME": str(directory / "pulumi-home")}
        self.stack = select_stack(name, self.work_dir, program=program,
                                  env={**os.environ, **env})

    def configure(self, config: dict[str, str], secret_keys: tuple[str, ...] = ()) -> None:
        """Set the stack's config to exactly `config` (string values, as `pulumi config set`)."""
        from pulumi import automation as auto

        current = self.stack.get_all_config()
        stale = [key for key in current if key not in config]
        if stale:
            self.stack.remove_all_config(stale)
        self.stack.set_all_config({key: auto.ConfigValue(value=value,
                                                         secret=key in secret_keys)
                                   for key, value in config.items()})

    def preview(self, **options) -> Run:
        return self._run(self.stack.preview, **options)

    def up(self, **options) -> Run:
        return self._run(self.stack.up, **options)

    def refresh(self, **options) -> Run:
        return self._run(self.stack.refresh, **options)

    def destroy(self, **options) -> Run:
        return self._run(self.stack.destroy, **options)

    @staticmethod
    def _run(command, **options) -> Run:
        """One engine command with its events recorded, timed, with its outputs (up) and the
        engine's change summary (preview reports it as `change_summary`)."""
        recorder = Recorder()
        started = time.monotonic()
        result = command(on_event=recorder, **options)
        run = recorder.run
        run.seconds = time.monotonic() - started
        if hasattr(result, "change_summary"):
            run.changes = {getattr(k, "value", k): v for k, v in result.change_summary.items()}
        else:
            run.changes = dict(result.summary.resource_changes or {})
        run.outputs = {key: value.value for key, value in getattr(result, "outputs", {}).items()}
        return run

    def resources(self) -> list[dict[str, Any]]:
        """The resources in the stack's checkpoint file, as stored (secrets encrypted)."""
        path = self.state_dir / ".pulumi" / "stacks" / "vela" / f"{self.stack.name}.json"
        checkpoint = json.loads(path.read_text()).get("checkpoint") or {}
        return (checkpoint.get("latest") or {}).get("resources") or []

    def vela_resources(self) -> set[str]:
        return {r["urn"].rsplit("::", 1)[-1] for r in self.resources()
                if _is_vela_resource(r["type"])}

    def state_text(self) -> str:
        """Every file the backend wrote (the checkpoint, its backups and history), as text."""
        return "\n".join(path.read_text(errors="replace")
                         for path in sorted(self.state_dir.rglob("*")) if path.is_file())

    def remove(self) -> None:
        self.stack.workspace.remove_stack(self.stack.name)


def config_strings(config: dict[str, Any]) -> dict[str, str]:
    """Stack config values as `pulumi config set` stores them: strings, objects as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in config.items()}
