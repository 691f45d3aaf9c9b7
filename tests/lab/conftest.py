"""Lab tests boot their own emulated hosts: one module, one lab, torn down at the end."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from lab.hosts import Lab


@contextmanager
def booted_lab(tmp_path_factory, hosts: int = 1):
    """A lab of `hosts` booted hosts in a fresh directory, always torn down."""
    lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        lab.up(hosts)
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(tmp_path_factory) as lab:
        yield lab
