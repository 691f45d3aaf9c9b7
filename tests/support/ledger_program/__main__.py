"""A program for testing the engine's rules: Ledger resources from stack config.

`vela:entries`: a list of {name, value, replaceKey?, replaceOnValue?, seconds?, fail?,
dependsOn?: [names], valueFrom?: name (its value is that entry's output: a property
dependency), deleteBeforeReplace?: bool}; `vela:token` (secret) goes into every entry's
`token` input;
`vela:shards`: how many explicit provider instances to spread the entries over (0: default).
"""

import pulumi

import providers  # noqa: F401  (the SDK pickling workaround)
from tests.support.ledger import Ledger

config = pulumi.Config()
entries = config.get_object("entries") or []
token = config.get_secret("token")
shards = [pulumi.ProviderResource("pulumi-python", f"shard{index}",
                                  {"vela:ledgerDir": config.require("ledgerDir")})
          for index in range(int(config.get("shards") or 0))]
declared: dict[str, Ledger] = {}
for index, entry in enumerate(entries):
    props = {key: entry[key] for key in ("name", "value", "replaceKey", "replaceOnValue",
                                         "seconds", "fail") if key in entry}
    if "valueFrom" in entry:
        props["value"] = declared[entry["valueFrom"]].value
    if token is not None:
        props["token"] = token
    declared[entry["name"]] = Ledger(entry["name"], props, pulumi.ResourceOptions(
        depends_on=[declared[name] for name in entry.get("dependsOn", [])],
        delete_before_replace=entry.get("deleteBeforeReplace", False),
        provider=shards[index % len(shards)] if shards else None))
pulumi.export("names", sorted(declared))
pulumi.export("tokenLengths", {name: r.tokenLength for name, r in declared.items()})
