"""Validation of generated XML against the installed libvirt's RelaxNG schema (a plain define
silently drops elements it does not know; validating does not).

The schema that counts is the one of the libvirt that will define the domain: the host's. The
copy here stands for it only when it is the same release (`matches_host`); otherwise the host
validates (GpuVm plans `vela_vm_validate`, virt-xml-validate, before it changes anything, and
the define keeps `virsh define --validate`).
"""

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


@lru_cache(maxsize=1)
def local_version() -> tuple[int, int, int] | None:
    """The libvirt release whose schemas are installed here (None: libvirt-python missing).

    libvirt-python's getVersion() is virGetVersion's library version: that of the libvirt.so
    it is linked against (major * 1,000,000 + minor * 1,000 + release), and Debian ships that
    library and /usr/share/libvirt/schemas in one package, libvirt0 (`dpkg -S
    /usr/share/libvirt/schemas/domain.rng`), so both are the same release. The schema files
    themselves carry no version."""
    try:
        import libvirt
    except ImportError:
        return None
    number = libvirt.getVersion()
    return number // 1_000_000, number // 1000 % 1000, number % 1000


def matches_host(host_version: tuple[int, ...] | None, directory: Path = SCHEMAS) -> bool:
    """The schemas here are those of the host's libvirt: installed, and the very release the
    host's daemon reports (schemas change between releases; unknown is no match)."""
    here = local_version()
    return (available(directory) and here is not None and host_version is not None
            and tuple(host_version[:3]) + (0,) * (3 - len(host_version[:3])) == here)


def validate(element: etree._Element, directory: Path = SCHEMAS) -> None:
    """Raise `SchemaError` naming every problem; no-op where libvirt's schemas are absent
    (the host validates before it changes anything, and again at define time)."""
    if not available(directory):
        return
    schema = _schema(str(directory / "domain.rng"))
    if not schema.validate(element):
        problems = "; ".join(f"line {error.line}: {error.message}"
                             for error in schema.error_log)
        raise SchemaError(f"the generated domain XML does not validate against libvirt's "
                          f"schema: {problems}")


def _release(version: tuple[int, ...] | None) -> str:
    return ".".join(str(part) for part in version) if version else "an unknown release"


def validate_for_host(element: etree._Element, host_version: tuple[int, ...] | None,
                      host_validates: bool | None, directory: Path = SCHEMAS) -> None:
    """Validate here when the schemas here are the host's libvirt's; otherwise the host has to
    validate before anything is written (`host_validates`: it has virt-xml-validate and
    xmllint; None: not observed, the host's `virsh define --validate` decides), or this raises
    `SchemaError` saying how to let it."""
    if matches_host(host_version, directory):
        validate(element, directory)
    elif host_validates is False:
        raise SchemaError(
            f"the domain XML cannot be checked against the host's libvirt schema before "
            f"anything is changed: the host runs libvirt {_release(host_version)}, this machine "
            f"has {_release(local_version()) if available(directory) else 'no libvirt schemas'}"
            f", and the host lacks virt-xml-validate or the xmllint it runs: install "
            f"libvirt-clients and libxml2-utils on the host, or run vela where libvirt "
            f"{_release(host_version)} is installed")
