"""The vela program: reads and validates the stack config, then declares the cluster.

Stack config is read here and nowhere else. The cluster's resources (HostTuning, SriovPool,
GpuVm under a VelaCluster component) are declared from the validated inventory.
"""

from pathlib import Path

import pulumi

import providers  # noqa: F401  (installs the SDK workaround before any resource is built)
from components.inventory import InventoryError, load_inventory_file, parse_nodes

config = pulumi.Config("vela")
try:
    inventory_file = config.get("inventoryFile")
    if inventory_file:
        nodes = load_inventory_file(Path(__file__).resolve().parent / inventory_file)
    else:
        nodes = parse_nodes(config.get_object("nodes") or [])
except InventoryError as error:
    # RunError shows the message alone, without a Python traceback.
    raise pulumi.RunError(str(error)) from None

pulumi.export("nodes", [{"name": node.name, "address": node.address, "port": node.port}
                        for node in nodes])
