"""Run calls concurrently, the way the provider process runs 4 at once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def run_concurrently(call: Callable[[Any], Any], arguments: list[Any]) -> list[Any]:
    """Call `call(argument)` for each argument, all at once; results in order, errors raised."""
    with ThreadPoolExecutor(max_workers=len(arguments)) as pool:
        return list(pool.map(call, arguments))
