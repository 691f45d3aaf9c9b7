"""A small dynamic provider used to prove the foundation end to end: it reads a host's facts over
SSH from inside the real provider server, the way HostTuning and friends will.

Inputs: address, port, user, hostKey, sysroot. The SSH private key comes from the stack config
(`vela:sshPrivateKey`, a secret) through `configure`, never from inputs, so it never lands in
state. It lives under tests/ because it is scaffolding, not a product resource.
"""

from __future__ import annotations

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
)
from pulumi.output import Unknown
from pydantic import ValidationError

from providers.errors import InvalidValue
from providers.facts import gather_facts
from providers.host import SecretKey
from providers.host.target import SshTarget


class ProbeInputs(SshTarget):
    sysroot: str = "/"


INPUT_KEYS = {"address", "port", "user", "hostKey", "sysroot"}


def _inputs(props: dict) -> dict:
    return {key: value for key, value in props.items() if not key.startswith("__")}


class HostProbe(ResourceProvider):
    """Gathers facts at create and read; changes nothing on the host."""

    def __init__(self, gather_timeout: float = 120.0) -> None:
        super().__init__()
        # Plain data only: this is pickled into every resource's state.
        self.limits = {"gather_timeout": gather_timeout}

    def configure(self, req) -> None:
        # Runs only in the provider process, after unpickling: the key never gets pickled.
        self.private_key = req.config.get("sshPrivateKey")

    def check(self, olds: dict, news: dict) -> CheckResult:
        # In preview, values computed from other resources arrive as Unknown: check the rest.
        unknown = {key for key, value in news.items() if isinstance(value, Unknown)}
        try:
            ProbeInputs.model_validate(_inputs(news))
        except ValidationError as exc:
            aliases = {"host_key": "hostKey"}
            failures = [CheckFailure(aliases.get(str(error["loc"][0]), str(error["loc"][0])),
                                     error["msg"])
                        for error in exc.errors() if error["loc"] and
                        aliases.get(str(error["loc"][0]), str(error["loc"][0])) not in unknown]
            return CheckResult(news, failures)
        return CheckResult(news, [])

    def diff(self, id_: str, olds: dict, news: dict) -> DiffResult:
        old, new = _inputs(olds), _inputs(news)
        changed = [key for key in new if old.get(key) != new[key]]
        return DiffResult(changes=bool(changed),
                          replaces=[key for key in changed if key in {"address", "port"}])

    def create(self, props: dict) -> CreateResult:
        inputs = ProbeInputs.model_validate(_inputs(props))
        return CreateResult(f"{inputs.address}:{inputs.port}", self._observe(inputs))

    def read(self, id_: str, props: dict) -> ReadResult:
        # Read gets the last outputs: the inputs are copied into them, next to observations.
        inputs = ProbeInputs.model_validate({key: value for key, value in props.items()
                                             if key in INPUT_KEYS})
        return ReadResult(id_, self._observe(inputs))

    def _observe(self, inputs: ProbeInputs) -> dict:
        if not getattr(self, "private_key", None):
            raise InvalidValue("no SSH key: set it with `pulumi config set --secret "
                               "sshPrivateKey < ~/.ssh/id_ed25519`")
        host = inputs.connect(SecretKey(self.private_key), sysroot=inputs.sysroot)
        facts = gather_facts(host, timeout=self.limits["gather_timeout"])
        gpus = sorted(address for address, device in facts.pci.items()
                      if device.vendor_id == 0x10DE and device.class_code >> 8 == 0x0302)
        return {**inputs.model_dump(by_alias=True), "hostname": facts.hostname,
                "numaNodes": len(facts.numa_nodes), "gpus": gpus,
                "pciFunctions": len(facts.pci)}


class HostProbeResource(Resource, module="vela", name="HostProbe"):
    """The resource a program declares; the engine runs `HostProbe` for it."""

    def __init__(self, name: str, props: dict, opts=None) -> None:
        super().__init__(HostProbe(), name, {**props, "hostname": None, "gpus": None,
                                             "numaNodes": None, "pciFunctions": None}, opts)
