"""The vela program: reads and validates the stack config, then declares the cluster.

Stack config is read in `components.program` and nowhere else. An invalid value fails
`pulumi preview` with the key and the reason. `components.runner` runs the same `main` inline
through the Automation API where the Python language host is not installed.
"""

import providers  # noqa: F401  (installs the SDK workaround before any resource is built)
from components.program import main

cluster = main()
