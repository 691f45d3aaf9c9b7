"""The vela program: reads and validates the stack config, then declares the cluster.

Stack config is read here and nowhere else. The cluster's resources (HostTuning, SriovPool,
GpuVm under a VelaCluster component) are declared from the validated inventory.
"""

import pulumi

import providers  # noqa: F401  (installs the SDK workaround before any resource is built)
from components.inventory import InventoryError, parse_nodes

config = pulumi.Config("vela")
try:
    nodes = parse_nodes(config.get_object("nodes") or [])
except InventoryError as error:
    # RunError shows the message alone, without a Python traceback.
    raise pulumi.RunError(str(error)) from None

pulumi.export("nodes", [{"name": node.name, "address": node.address, "port": node.port}
                        for node in nodes])
