"""Workarounds for bugs in the pinned Pulumi SDK. Installed by importing `providers`.

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

import pulumi.dynamic.dynamic as _dynamic

_MARK = "_vela_restores_pickler"


def install() -> None:
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
