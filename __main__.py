"""The vela program: reads and validates the stack config, then declares the cluster.

Stack config is read here and nowhere else (`components.program` turns it into typed
arguments). An invalid value fails `pulumi preview` with the key and the reason.
"""

import pulumi

import providers  # noqa: F401  (installs the SDK workaround before any resource is built)
from components.program import ConfigError, declare, read_config

try:
    cluster_args, provider_config = read_config(pulumi.Config("vela"))
except ConfigError as error:
    # RunError shows the message alone, without a Python traceback.
    raise pulumi.RunError(str(error)) from None

nodes = cluster_args.nodes
cluster = declare(cluster_args, provider_config)
