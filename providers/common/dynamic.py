"""What every vela dynamic provider shares: its inputs apart from outputs and the pickled
provider, validation with one message per bad field (check tolerates preview's unknowns), the
SSH key from provider configuration, and the connection to the host.

A provider class names its inputs model, its error type and its output keys; everything here
works from those. Subclasses stay in their own modules: state pickles them by reference.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pulumi.dynamic import CheckFailure, CheckResult, ResourceProvider
from pulumi.output import Unknown
from pydantic import BaseModel, ValidationError

from ..errors import VelaError
from ..host import Host, SecretKey

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
