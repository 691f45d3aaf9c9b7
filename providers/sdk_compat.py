"""Workarounds for bugs in the pinned Pulumi SDK. Installed by importing `providers`.

Two of them:
- `serialize_provider` leaks pickler wrappers (below).
- In the provider process the SDK reports every exception as its full Python traceback
  (`_abort_with_traceback` in `pulumi/dynamic/__main__.py` aborts the gRPC call with
  `traceback.format_exc()`), and the engine shows that to the user as is. vela's own errors
  (`VelaError`) already say what failed, where and what to do: for them the user now gets the
  message alone. Any other exception is a bug and keeps its traceback, for the report.

`pulumi.dynamic.dynamic.serialize_provider` (pulumi 3.272) replaces
`pickle._Pickler._batch_setitems` with a sorting wrapper around the current method on every call
and never restores it. Each dynamic resource built in a process adds one more wrapper; after about
960 resources pickling the next provider overflows the stack (RecursionError), so a 400-node
cluster (1,200 dynamic resources) cannot even be previewed. The guard below snapshots the two
methods it patches and restores them after every serialization, so there is always exactly one
wrapper while a provider is pickled, and none otherwise. The serialized bytes are unchanged
(sorting once or N times gives the same order).
"""

from __future__ import annotations

import functools
import pickle
import sys
import traceback

import pulumi.dynamic.dynamic as _dynamic

from .errors import VelaError

_MARK = "_vela_restores_pickler"


def install() -> None:
    """Install both workarounds, once per process (idempotent)."""
    _guard_serialize_provider()
    _plain_messages_in_the_provider_process()


def _guard_serialize_provider() -> None:
    """Wrap `serialize_provider` once per process (idempotent)."""
    original = _dynamic.serialize_provider
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def serialize_provider(provider):
        batch_setitems = pickle._Pickler._batch_setitems
        save_dict = pickle._Pickler.save_dict
        try:
            return original(provider)
        finally:
            pickle._Pickler._batch_setitems = batch_setitems
            pickle._Pickler.save_dict = save_dict

    setattr(serialize_provider, _MARK, True)
    _dynamic.serialize_provider = serialize_provider


class _MessageOrTraceback:
    """Stands in for the `traceback` module inside `pulumi.dynamic.__main__`: `format_exc()`
    gives a VelaError's message alone, anything else's full traceback."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def format_exc(self, *args, **kwargs) -> str:
        error = sys.exc_info()[1]
        if isinstance(error, VelaError):
            return str(error)
        return self._module.format_exc(*args, **kwargs)


def _plain_messages_in_the_provider_process() -> None:
    """Only in the provider process: `python -m pulumi.dynamic` runs the SDK's server module as
    `__main__`, which looks `traceback` up in its globals at each failure. Our modules are
    imported there when the first call unpickles a provider, before its error is formatted."""
    main = sys.modules.get("__main__")
    if main is None or not hasattr(main, "DynamicResourceProviderServicer"):
        return
    if getattr(main, "traceback", None) is traceback:
        main.traceback = _MessageOrTraceback(traceback)
