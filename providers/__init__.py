"""vela's Pulumi dynamic providers and the layers beneath them.

- `host`: run commands and move files on a hypervisor host (SSH or local).
- `facts`: everything vela needs to know about a host's hardware, gathered in one round trip.
- `errors`, `validate`: the error hierarchy and the validators for shell-bound values.

Importing this package installs the SDK workaround in `sdk_compat` before any dynamic resource
is built. Provider classes must stay where they are defined (module path + class name is what
Pulumi pickles into state).
"""

from . import sdk_compat

sdk_compat.install()
