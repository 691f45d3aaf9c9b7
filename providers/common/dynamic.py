"""What every vela dynamic provider and resource shares: its inputs apart from outputs and the
pickled provider, validation with one message per bad field (check tolerates preview's
unknowns), the diff rules (which inputs replace, drift recorded by the last run), the engine
calls mapped onto the resource's converge and removal, the SSH key from provider
configuration, and the connection to the host. Create, update and delete each run as one
progress operation (common/progress.py): `pulumi up` shows their steps as they happen, and an
error's first line names the host, the call and the step it failed at.

A provider class names its inputs model, its error type, its output keys and the inputs that
replace; it implements `converge` (create and update), `remove` (delete), `read` and its id.
Subclasses stay in their own modules: state pickles them by reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)
from pulumi.output import Unknown
from pydantic import BaseModel, ValidationError

from ..errors import VelaError
from ..host import Host, SecretKey
from . import progress

NO_KEY = ("no SSH private key: set it as secret stack config with "
          "`pulumi config set --secret vela:sshPrivateKey < KEYFILE`")


def field_name(error: dict, whole: str = "inputs") -> str:
    """The input a pydantic error is about, dotted; `whole` for a model-level error."""
    return ".".join(str(part) for part in error["loc"]) or whole


class HostResourceProvider(ResourceProvider):
    """Pickled into every resource's state: instance attributes are plain data only."""

    kind: ClassVar[str]  # the resource's name in messages: "SriovPool"
    args_model: ClassVar[type[BaseModel]]
    error: ClassVar[type[VelaError]]
    output_keys: ClassVar[list[str]]
    replace_on: ClassVar[set[str]]  # inputs whose change means another resource
    model_error_field: ClassVar[str] = "inputs"  # where check reports model-level errors

    @classmethod
    def inputs(cls, props: dict[str, Any]) -> dict[str, Any]:
        """The resource's inputs: props without the pickled provider and the outputs."""
        return {key: value for key, value in props.items()
                if not key.startswith("__") and key not in cls.output_keys}

    @classmethod
    def parse_inputs(cls, props: dict[str, Any]) -> Any:
        try:
            return cls.args_model.model_validate(cls.inputs(props))
        except ValidationError as exc:
            raise cls.error(f"invalid {cls.kind} inputs: " + "; ".join(
                f"{field_name(error)}: {error['msg']}" for error in exc.errors())) from None

    def configure(self, req) -> None:
        self.private_key = req.config.get("sshPrivateKey")
        self.private_key_passphrase = req.config.get("sshPrivateKeyPassphrase")

    def check(self, olds: dict, news: dict) -> CheckResult:
        """Validate what is known; a value unknown in preview is not reported missing."""
        unknown = {key for key, value in news.items() if isinstance(value, Unknown)}
        known = {key: value for key, value in self.inputs(news).items() if key not in unknown}
        try:
            self.args_model.model_validate(known)
        except ValidationError as exc:
            return CheckResult(news, [
                CheckFailure(field_name(error, self.model_error_field), error["msg"])
                for error in exc.errors()
                if not (error["type"] == "missing" and error["loc"][0] in unknown)])
        return CheckResult(news, [])

    def _host(self, spec) -> Host:
        key = getattr(self, "private_key", None)
        if not key:
            raise self.error(NO_KEY)
        return spec.connect(SecretKey(key, getattr(self, "private_key_passphrase", None)),
                            name=f"{spec.address}:{spec.port}")

    # -- the engine's calls, on the resource's own converge and removal -------------------------

    def diff(self, id_: str, olds: dict, news: dict) -> DiffResult:
        """Changed inputs update (or replace, for `replace_on`); so does drift that the last
        run or refresh recorded. Replacement deletes first: a host's devices and files cannot
        be held twice."""
        changed = changed_inputs(self.inputs(olds), self.inputs(news))
        return DiffResult(changes=bool(changed) or self.drifted(olds),
                          replaces=[key for key in changed if key in self.replace_on],
                          delete_before_replace=True)

    def drifted(self, olds: dict) -> bool:
        """Whether the recorded outputs say the resource is not as its inputs want."""
        return olds.get("inSync") is False

    def create(self, props: dict) -> CreateResult:
        spec = self.parse_inputs(props)
        with self._operation(spec, "create") as host:
            outputs = self.converge(host, spec, props, None)
        return CreateResult(self.resource_id(spec, outputs), outputs)

    def update(self, id_: str, olds: dict, news: dict) -> UpdateResult:
        spec = self.parse_inputs(news)
        with self._operation(spec, "update") as host:
            return UpdateResult(self.converge(host, spec, news, olds))

    def delete(self, id_: str, props: dict) -> None:
        spec = self.parse_inputs(props)
        with self._operation(spec, "delete") as host:
            self.remove(host, spec, props)

    @contextmanager
    def _operation(self, spec: Any, action: str) -> Iterator[Host]:
        """One engine call on the resource's host, reported as it goes (common/progress.py);
        an error leaving it names the host, the call and the step in its first line. A missing
        SSH key is the stack's, not the host's: that error stays as it is."""
        host = self._host(spec)  # connects at its first command, inside the operation
        with progress.operation(host.name, self.kind, action):
            yield host
            progress.report("done")

    def converge(self, host: Host, spec: Any, props: dict, previous: dict | None) -> dict:
        """Create (`previous` None) and update: drive the host to the inputs; the outputs."""
        raise NotImplementedError

    def remove(self, host: Host, spec: Any, props: dict) -> None:
        """Delete: put back what the resource changed."""
        raise NotImplementedError

    def resource_id(self, spec: Any, outputs: dict) -> str:
        """The id the engine keeps for a created resource: the host and what on it."""
        raise NotImplementedError


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


class HostResource(Resource):
    """A vela resource: registered with its provider and every output key, so the engine sets
    each output as an attribute of that name (the subclass declares them)."""

    provider_class: ClassVar[type[HostResourceProvider]]

    def __init__(self, name: str, args: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        outputs = {key: None for key in self.provider_class.output_keys}
        super().__init__(self.provider_class(), name, {**args, **outputs}, opts)
