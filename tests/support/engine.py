"""A stand-in for the Pulumi engine, for tests only: users deploy with the Pulumi CLI.

It runs the real program (`__main__.py`) in this process with a resource monitor of its own, and
drives the real providers through real provider servers (`python -m pulumi.dynamic`, one process
per provider, as the CLI starts them). It follows the engine's rules for dynamic providers:

- Every custom resource goes through Check (old inputs, new inputs), then Create when the state
  has no such URN, else Diff (old outputs, checked inputs): changes with replaces -> replace
  (delete first when the resource asks for delete_before_replace or the diff says so, else create
  the new one and delete the old at the end), changes -> Update, none -> same (no call).
- A registration is answered only when its step is done, so the program's dependencies (inputs
  from other resources, depends_on, parents) order the steps exactly as the engine orders them;
  independent steps run at once, up to `parallel`, and each provider process still serves 4
  calls at a time.
- Resources in the state that the program no longer declares are deleted after the program ends,
  dependents first (by dependencies, parent and provider), independent ones in parallel. Nothing
  is deleted when a step failed; the state then keeps what finished and what was there before.
- Explicit provider resources (`pulumi:providers:pulumi-python`) each get a process of their own,
  configured with their inputs; resources without one use the default provider, configured with
  the whole stack config, secrets decrypted.
- State is kept between runs in a checkpoint file. Secret values (wire-marked secret inputs, output
  keys that share a name with a secret input, additional_secret_outputs) are encrypted in it with
  a key derived from the passphrase, as the passphrase secrets manager does.
- Preview runs only Check and Diff; destroy deletes everything in dependency order; refresh calls
  Read and drops resources whose Read returns no id.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gc
import hashlib
import json
import os
import runpy
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pulumi
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from pulumi.output import Unknown
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from .provider_harness import PROJECT_ROOT, ProviderCallError, ProviderServer, to_struct

SIG = rpc._special_sig_key  # noqa: SLF001 - the wire format's marker key
SECRET_SIG = rpc._special_secret_sig  # noqa: SLF001
UNKNOWN = rpc.UNKNOWN
STACK_TYPE = "pulumi:pulumi:Stack"
PROVIDER_PREFIX = "pulumi:providers:"
DYNAMIC_PACKAGE = "pulumi-python"


# -- values on the wire ----------------------------------------------------------------------------

def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG) == SECRET_SIG


def secret(value: Any) -> dict:
    return {SIG: SECRET_SIG, "value": value}


def reveal(value: Any) -> Any:
    """A wire value with every secret unwrapped: what a provider that refuses secrets receives."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [reveal(item) for item in value]
    return value


def wire(value: Any) -> Any:
    """A value the SDK deserialized back into wire form (unknowns as the engine sends them)."""
    if isinstance(value, Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {key: wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [wire(item) for item in value]
    return value


def mark_secret_outputs(outputs: dict, inputs: dict, additional: list[str]) -> dict:
    """The engine's rule: an output is secret when an input of its name was, or it is listed."""
    secret_keys = {key for key, value in inputs.items() if is_secret(value)} | set(additional)
    return {key: secret(value) if key in secret_keys and not is_secret(value) else value
            for key, value in outputs.items()}


# -- state -----------------------------------------------------------------------------------------

@dataclass
class ResourceState:
    urn: str
    type: str
    custom: bool
    id: str = ""
    parent: str = ""
    dependencies: list[str] = field(default_factory=list)
    provider: str = ""  # "URN::ID" of the provider that manages a custom resource
    inputs: dict[str, Any] = field(default_factory=dict)  # wire form: secrets still marked
    outputs: dict[str, Any] = field(default_factory=dict)
    delete_before_replace: bool = False
    additional_secret_outputs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]

    def depends_on(self) -> set[str]:
        """URNs this resource needs to exist: its parent, its dependencies and its provider."""
        needs = set(self.dependencies)
        if self.parent:
            needs.add(self.parent)
        if self.provider:
            needs.add(self.provider.rsplit("::", 1)[0])
        return needs


class SecretsManager:
    """Passphrase-based encryption of secret values in the checkpoint (AES-256-GCM)."""

    def __init__(self, passphrase: str, salt: bytes) -> None:
        self.salt = salt
        self.key = hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, 200_000)

    def encrypt(self, value: Any) -> dict:
        nonce = os.urandom(12)
        sealed = AESGCM(self.key).encrypt(nonce, json.dumps(value).encode(), None)
        return {SIG: SECRET_SIG, "ciphertext": base64.b64encode(nonce + sealed).decode()}

    def decrypt(self, value: dict) -> Any:
        raw = base64.b64decode(value["ciphertext"])
        return json.loads(AESGCM(self.key).decrypt(raw[:12], raw[12:], None))

    def seal(self, value: Any) -> Any:
        if is_secret(value):
            return self.encrypt(value["value"])
        if isinstance(value, dict):
            return {key: self.seal(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.seal(item) for item in value]
        return value

    def unseal(self, value: Any) -> Any:
        if isinstance(value, dict) and value.get(SIG) == SECRET_SIG and "ciphertext" in value:
            return secret(self.decrypt(value))
        if isinstance(value, dict):
            return {key: self.unseal(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.unseal(item) for item in value]
        return value


class Checkpoint:
    """The stack's state between runs: resources in dependency order, and the stack's outputs."""

    def __init__(self, path: Path, passphrase: str) -> None:
        self.path = path
        self.passphrase = passphrase

    def load(self) -> tuple[dict[str, ResourceState], dict[str, Any]]:
        if not self.path.exists():
            return {}, {}
        document = json.loads(self.path.read_text())
        secrets = SecretsManager(self.passphrase, base64.b64decode(document["salt"]))
        resources = [ResourceState(**secrets.unseal(entry)) for entry in document["resources"]]
        return {r.urn: r for r in resources}, secrets.unseal(document["outputs"])

    def save(self, resources: dict[str, ResourceState], outputs: dict[str, Any]) -> None:
        salt = os.urandom(16)
        if self.path.exists():
            salt = base64.b64decode(json.loads(self.path.read_text())["salt"])
        secrets = SecretsManager(self.passphrase, salt)
        document = {"version": 3, "salt": base64.b64encode(salt).decode(),
                    "resources": [secrets.seal(asdict(r)) for r in dependency_order(resources)],
                    "outputs": secrets.seal(outputs)}
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(document, indent=1, sort_keys=True))
        partial.replace(self.path)


def dependency_order(resources: dict[str, ResourceState]) -> list[ResourceState]:
    """Resources with everything they depend on before them (the checkpoint's order)."""
    ordered: list[ResourceState] = []
    placed: set[str] = set()

    def place(urn: str, visiting: frozenset = frozenset()) -> None:
        if urn in placed or urn not in resources or urn in visiting:
            return
        for need in sorted(resources[urn].depends_on()):
            place(need, visiting | {urn})
        placed.add(urn)
        ordered.append(resources[urn])

    for urn in resources:
        place(urn)
    return ordered


# -- one run ---------------------------------------------------------------------------------------

@dataclass
class Step:
    op: str  # create, update, replace, same, delete, delete-replaced, read, refresh-delete
    urn: str
    started: float
    finished: float = 0.0

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass
class Result:
    """What one preview/up/refresh/destroy did."""

    kind: str
    steps: list[Step]
    outputs: dict[str, Any]
    errors: list[str]
    seconds: float

    def ops(self, *, custom_only: bool = True) -> dict[str, str]:
        """Resource name -> what happened to it (a replaced resource's old copy aside)."""
        return {step.name: step.op for step in self.steps if step.op != "delete-replaced"
                and (not custom_only or PROVIDER_PREFIX not in step.urn)}

    def names(self, op: str) -> set[str]:
        return {step.name for step in self.steps if step.op == op}

    def step(self, name: str, op: str | None = None) -> Step:
        return next(s for s in self.steps if s.name == name and (op is None or s.op == op))

    @property
    def ok(self) -> bool:
        return not self.errors


class StepFailed(Exception):
    pass


class Engine:
    """One stack: its config, its checkpoint and the provider processes of the current run."""

    def __init__(self, *, stack: str, config: dict[str, str], secret_keys: list[str],
                 state_dir: Path, passphrase: str = "vela-test-passphrase",
                 project: str = "vela", program: Path = PROJECT_ROOT / "__main__.py",
                 parallel: int = 16, log: Callable[[str], None] | None = None) -> None:
        self.project, self.stack = project, stack
        self.config, self.secret_keys = dict(config), list(secret_keys)
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = Checkpoint(state_dir / f"{stack}.json", passphrase)
        self.program = program
        self.parallel = parallel
        self.log = log or (lambda message: None)

    # -- commands --------------------------------------------------------------------------------

    def preview(self) -> Result:
        return self._deploy(preview=True)

    def up(self) -> Result:
        return self._deploy(preview=False)

    def destroy(self) -> Result:
        return self._run("destroy", lambda run: run.delete_all())

    def refresh(self) -> Result:
        return self._run("refresh", lambda run: run.refresh_all())

    def state(self) -> dict[str, ResourceState]:
        return self.checkpoint.load()[0]

    def state_text(self) -> str:
        return self.checkpoint.path.read_text() if self.checkpoint.path.exists() else ""

    # -- internals -------------------------------------------------------------------------------

    def _deploy(self, *, preview: bool) -> Result:
        def body(run: "_Run") -> None:
            run.run_program(preview)
            if not preview and not run.errors:
                run.delete_unclaimed()
        return self._run("preview" if preview else "up", body, save=not preview)

    def _run(self, kind: str, body: Callable[["_Run"], None], *, save: bool = True) -> Result:
        resources, outputs = self.checkpoint.load()
        run = _Run(self, resources, outputs)
        started = time.monotonic()
        try:
            body(run)
        finally:
            run.close()
            if save:
                self.checkpoint.save(run.final_state(), run.outputs)
        return Result(kind, run.steps, reveal(run.outputs), run.errors,
                      time.monotonic() - started)


class _Run:
    """One engine run: the old state, what the program declares now, and the steps taken."""

    def __init__(self, engine: Engine, old: dict[str, ResourceState],
                 outputs: dict[str, Any]) -> None:
        self.engine = engine
        self.old = old
        self.new: dict[str, ResourceState] = {}
        self.deleted: set[str] = set()  # old URNs whose resource is gone
        self.outputs = outputs
        self.steps: list[Step] = []
        self.errors: list[str] = []
        self.preview = False
        self.lock = threading.Lock()
        self.servers: dict[str, ProviderServer] = {}
        self.pending_deletes: list[ResourceState] = []  # replaced, create-before-delete

    # -- providers -------------------------------------------------------------------------------

    def default_provider(self) -> ResourceState:
        urn = self._urn("", f"{PROVIDER_PREFIX}{DYNAMIC_PACKAGE}", "default")
        with self.lock:
            if urn not in self.new:
                old = self.old.get(urn)
                self.new[urn] = ResourceState(
                    urn=urn, type=f"{PROVIDER_PREFIX}{DYNAMIC_PACKAGE}", custom=True,
                    id=old.id if old else str(uuid.uuid4()))
        return self.new[urn]

    def server(self, reference: str) -> ProviderServer:
        """The provider process behind a provider reference (`URN::ID`), started once a run."""
        with self.lock:
            if reference not in self.servers:
                urn = reference.rsplit("::", 1)[0]
                provider = self.new.get(urn) or self.old.get(urn)
                if provider is None:
                    raise StepFailed(f"unknown provider {reference}")
                if urn.endswith("::default"):
                    config = dict(self.engine.config)  # the whole stack config, decrypted
                else:
                    config = reveal(provider.inputs)
                log = self.engine.state_dir / f"provider-{provider.name}.log"
                server = ProviderServer(config=config, project=self.engine.project,
                                        stack=self.engine.stack, log=log)
                self.servers[reference] = server.__enter__()
            return self.servers[reference]

    def close(self) -> None:
        for server in self.servers.values():
            server.__exit__(None, None, None)
        self.servers.clear()

    # -- the program -----------------------------------------------------------------------------

    def run_program(self, preview: bool) -> None:
        self.preview = preview
        monitor = _Monitor(self)
        runtime_settings.ROOT.set(None)
        # A fresh event loop per run, as a fresh program process would have: nothing a failed
        # run left scheduled can reach the next one (nor be waited for by it).
        with runtime_settings.SETTINGS.lock:
            runtime_settings.SETTINGS.outputs.clear()
        previous_loop = _current_loop()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # Outputs of a failed step are never awaited: the run's error already says why.
        loop.set_exception_handler(lambda _loop, _context: None)
        pulumi.runtime.set_mocks(_NoMocks(), project=self.engine.project,
                                 stack=self.engine.stack, preview=preview, monitor=monitor)
        pulumi.runtime.set_all_config(self.engine.config, secret_keys=self.engine.secret_keys)
        # set_mocks registers the stack's outputs at once; the language host does it after the
        # program, with its exports.
        stack = runtime_settings.get_root_resource()
        stack.outputs, stack._outputs_registered = {}, False  # noqa: SLF001
        # The SDK sends registrations from the loop's default executor: its size is how many
        # steps can be in flight, the engine's `--parallel`.
        executor = ThreadPoolExecutor(max_workers=self.engine.parallel)
        loop.set_default_executor(executor)
        try:
            runpy.run_path(str(self.engine.program), run_name="__main__")
            stack._finish()  # noqa: SLF001 - what run_in_stack does after the program
            _sync_await(wait_for_rpcs())
        except Exception as exc:  # noqa: BLE001 - the program's failure is the run's result
            message = str(exc).strip() or type(exc).__name__
            with self.lock:
                if not any(message in error or error in message for error in self.errors):
                    self.errors.append(message)
        finally:
            monitor.wait_idle()  # steps already started finish, as in the engine; no new ones
            _close(loop)
            executor.shutdown(wait=False)
            asyncio.set_event_loop(previous_loop)
            gc.unfreeze()  # the program freezes its heap, right for a process that then exits
            pulumi.runtime.set_all_config({})

    def _urn(self, parent: str, type_: str, name: str) -> str:
        if parent:
            type_ = parent.split("::")[2].split("$")[-1] + "$" + type_
        return f"urn:pulumi:{self.engine.stack}::{self.engine.project}::{type_}::{name}"

    def register(self, request) -> tuple[str, str, dict]:
        """One RegisterResource: the step for it, done before the answer goes back."""
        urn = self._urn(request.parent, request.type, request.name)
        wire = json_format.MessageToDict(request.object)
        state = ResourceState(
            urn=urn, type=request.type, custom=bool(request.custom), parent=request.parent,
            dependencies=sorted(set(request.dependencies)), inputs=wire,
            delete_before_replace=bool(request.deleteBeforeReplace),
            additional_secret_outputs=list(request.additionalSecretOutputs))
        if not state.custom:
            state.outputs = {}
            self._record(state, "same" if urn in self.old else "create")
            return urn, "", {}
        if request.type.startswith(PROVIDER_PREFIX):
            return self._provider_step(state)
        state.provider = request.provider or self._reference(self.default_provider())
        try:
            return self._resource_step(state)
        except ProviderCallError as exc:
            self._fail(f"{urn}: {exc.call.lower()} failed: {exc.message}")
        except StepFailed as exc:
            self._fail(str(exc))

    def _fail(self, message: str):
        with self.lock:
            self.errors.append(message)
        raise StepFailed(message)

    @staticmethod
    def _reference(provider: ResourceState) -> str:
        return f"{provider.urn}::{provider.id}"

    def _provider_step(self, state: ResourceState) -> tuple[str, str, dict]:
        old = self.old.get(state.urn)
        same = old is not None and reveal(old.inputs) == reveal(state.inputs)
        state.id = old.id if old else str(uuid.uuid4())
        state.outputs = copy.deepcopy(state.inputs)
        self._record(state, "same" if same else ("update" if old else "create"))
        return state.urn, state.id, state.outputs

    def _resource_step(self, state: ResourceState) -> tuple[str, str, dict]:
        old = self.old.get(state.urn)
        server = self.server(state.provider)
        step = Step("", state.urn, time.monotonic())
        news = reveal(state.inputs)
        checked, failures = server.check(state.urn, reveal(old.inputs) if old else {}, news)
        checked = wire(checked)
        if failures:
            raise StepFailed(f"{state.urn}: check failed: " + "; ".join(
                f"{prop}: {reason}" for prop, reason in failures))
        secret_inputs = {key for key, value in state.inputs.items() if is_secret(value)}
        state.inputs = {key: secret(value) if key in secret_inputs else value
                        for key, value in checked.items()}
        op, outputs = self._decide_and_apply(state, old, server, checked)
        state.outputs = mark_secret_outputs(outputs, state.inputs,
                                            state.additional_secret_outputs)
        step.op, step.finished = op, time.monotonic()
        self._record(state, None, step)
        self.engine.log(f"{op:8} {state.name} ({step.finished - step.started:.1f} s)")
        return state.urn, state.id, state.outputs

    def _decide_and_apply(self, state: ResourceState, old: ResourceState | None,
                          server: ProviderServer, checked: dict) -> tuple[str, dict]:
        if old is None:
            if self.preview:
                return "create", checked
            state.id, outputs = server.create(state.urn, checked)
            return "create", wire(outputs)
        diff = server.diff(state.urn, old.id, reveal(old.outputs), checked)
        changes = diff.changes if diff.changes is not None else \
            reveal(old.inputs) != checked
        # Moving to another provider instance replaces the resource, whatever the diff says.
        moved = old.provider.rsplit("::", 1)[0] != state.provider.rsplit("::", 1)[0]
        state.id = old.id
        if not changes and not moved:
            return "same", reveal(old.outputs)
        if self.preview:
            return ("replace" if diff.replaces or moved else "update"), checked
        if diff.replaces or moved:
            if state.delete_before_replace or diff.delete_before_replace:
                self.server(old.provider).delete(old.urn, old.id, reveal(old.outputs))
            else:
                self.pending_deletes.append(old)
            state.id, outputs = server.create(state.urn, checked)
            return "replace", wire(outputs)
        return "update", wire(server.update(state.urn, old.id, reveal(old.outputs), checked))

    def _record(self, state: ResourceState, op: str | None, step: Step | None = None) -> None:
        if step is None:
            now = time.monotonic()
            step = Step(op or "same", state.urn, now, now)
        with self.lock:
            self.new[state.urn] = state
            self.steps.append(step)

    def register_outputs(self, request) -> None:
        if request.urn.split("::")[2] == STACK_TYPE:
            self.outputs = json_format.MessageToDict(request.outputs)

    # -- deletes ---------------------------------------------------------------------------------

    def delete_unclaimed(self) -> None:
        """After a successful program: delete what it no longer declares, dependents first."""
        gone = {urn: r for urn, r in self.old.items() if urn not in self.new}
        for replaced in self.pending_deletes:
            gone[replaced.urn + "#replaced"] = replaced
        self._delete_in_order(gone)

    def delete_all(self) -> None:
        self._delete_in_order(dict(self.old))
        self.outputs = {}

    def _delete_in_order(self, doomed: dict[str, ResourceState]) -> None:
        """Delete each resource once no other doomed resource still needs it; in parallel."""
        needed_by = {key: {other for other, r in doomed.items()
                           if other != key and doomed[key].urn in r.depends_on()}
                     for key in doomed}
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(max_workers=self.engine.parallel) as pool:
            while needed_by or running:
                ready = [key for key, users in needed_by.items() if not users]
                for key in ready:
                    del needed_by[key]
                    op = "delete-replaced" if key.endswith("#replaced") else "delete"
                    running[pool.submit(self._delete, doomed[key], op)] = key
                if not running:
                    raise StepFailed(f"dependency cycle among {sorted(needed_by)}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    key = running.pop(future)
                    try:
                        future.result()
                    except (ProviderCallError, StepFailed) as exc:
                        self.errors.append(f"{doomed[key].urn}: delete failed: "
                                           f"{getattr(exc, 'message', exc)}")
                        return  # what still needs it stays, and so does it
                    for users in needed_by.values():
                        users.discard(key)

    def _delete(self, resource: ResourceState, op: str = "delete") -> None:
        step = Step(op, resource.urn, time.monotonic())
        if resource.custom and not resource.type.startswith(PROVIDER_PREFIX):
            self.server(resource.provider).delete(resource.urn, resource.id,
                                                  reveal(resource.outputs))
        step.finished = time.monotonic()
        with self.lock:
            if op == "delete":
                self.deleted.add(resource.urn)
            self.steps.append(step)
        self.engine.log(f"{op:8} {resource.name} ({step.finished - step.started:.1f} s)")

    # -- refresh ---------------------------------------------------------------------------------

    def refresh_all(self) -> None:
        readable = [r for r in self.old.values()
                    if r.custom and not r.type.startswith(PROVIDER_PREFIX)]
        with ThreadPoolExecutor(max_workers=self.engine.parallel) as pool:
            for future in [pool.submit(self._read, r) for r in readable]:
                try:
                    future.result()
                except ProviderCallError as exc:
                    self.errors.append(f"read failed: {exc.message}")
        for urn, resource in self.old.items():
            if urn not in self.deleted:
                self.new.setdefault(urn, resource)

    def _read(self, resource: ResourceState) -> None:
        step = Step("read", resource.urn, time.monotonic())
        id_, outputs = self.server(resource.provider).read(resource.urn, resource.id,
                                                           reveal(resource.outputs))
        step.finished = time.monotonic()
        with self.lock:
            if not id_:
                step.op = "refresh-delete"
                self.deleted.add(resource.urn)
            else:
                refreshed = copy.copy(resource)
                refreshed.outputs = mark_secret_outputs(wire(outputs), resource.inputs,
                                                        resource.additional_secret_outputs)
                self.new[resource.urn] = refreshed
            self.steps.append(step)

    # -- the state this run leaves ---------------------------------------------------------------

    def final_state(self) -> dict[str, ResourceState]:
        """New resources, plus old ones neither redeclared nor deleted (kept after a failure)."""
        final = {urn: r for urn, r in self.old.items() if urn not in self.deleted}
        final.update(self.new)
        return final


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return None


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what a failed program left scheduled; the loop never runs again (it stays open:
    the SDK keeps references to it), and the next run gets a new one."""
    for task in asyncio.all_tasks(loop):
        task.cancel()


class _Monitor(MockMonitor):
    """The resource monitor the program talks to: each registration becomes an engine step."""

    def __init__(self, run: _Run) -> None:
        super().__init__(_NoMocks())
        self.run = run
        self.in_flight = 0
        self.idle = threading.Condition()

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method's name
        _ensure_event_loop()
        with self.idle:
            self.in_flight += 1
        try:
            urn, id_, outputs = self.run.register(request)
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_,
                                                     object=to_struct(outputs))

    def RegisterResourceOutputs(self, request):  # noqa: N802
        self.run.register_outputs(request)
        return super().RegisterResourceOutputs(request)

    def wait_idle(self) -> None:
        """Like the engine after a failure: let the steps already started finish."""
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0)


class _NoMocks(pulumi.runtime.Mocks):
    """The monitor answers every registration itself; nothing is mocked."""

    def new_resource(self, args):
        raise AssertionError("the engine stand-in registers resources itself")

    def call(self, args):
        raise AssertionError(f"{args.token}: the program makes no invokes")

