"""Validation of generated XML against the installed libvirt's RelaxNG schema (a plain define
silently drops elements it does not know; validating does not)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lxml import etree

SCHEMAS = Path("/usr/share/libvirt/schemas")


class SchemaError(ValueError):
    pass


@lru_cache(maxsize=4)
def _schema(path: str) -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(path))


def available(directory: Path = SCHEMAS) -> bool:
    return (directory / "domain.rng").exists()


def validate(element: etree._Element, directory: Path = SCHEMAS) -> None:
    """Raise `SchemaError` naming every problem; no-op where libvirt's schemas are absent
    (the host validates again at define time with `virsh define --validate`)."""
    if not available(directory):
        return
    schema = _schema(str(directory / "domain.rng"))
    if not schema.validate(element):
        problems = "; ".join(f"line {error.line}: {error.message}"
                             for error in schema.error_log)
        raise SchemaError(f"the generated domain XML does not validate against libvirt's "
                          f"schema: {problems}")
