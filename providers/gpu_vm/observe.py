"""What GpuVm reads from the hypervisor besides the hardware facts, in the same round trip:
libvirt's version, every domain (to know which devices are taken), this guest's state and
addresses, hugetlbfs mounts, the base image, the guest's files. Parsing is pure; domains are
compared by the fields vela owns, parsed and normalised, never as whole XML strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from lxml import etree

from ..common import libvirt, shell
from ..common.domains import owner
from ..common.records import decoded, records
from .spec import GpuVmArgs

VOLUMES = "/var/lib/libvirt/images/vela"
FAILED = "/var/lib/vela/failed"

_SCRIPT = r'''
# -- GpuVm observations ---------------------------------------------------------------------
if [ -z "$R" ] && command -v virsh > /dev/null 2>&1; then
  V="virsh -c qemu:///system"
  emit libvirt - version \
    "$($V version --daemon 2>/dev/null | sed -n 's/^Running against daemon: *//p')"
  # virt-xml-validate (libvirt-clients) runs xmllint, which only libvirt-daemon recommends
  # (libxml2-utils): both are needed to check a domain against this host's schema.
  if command -v virt-xml-validate > /dev/null 2>&1 && command -v xmllint > /dev/null 2>&1; then
    emit libvirt - validator yes
  else
    emit libvirt - validator no
  fi
  for uuid in $($V -q list --all --uuid 2>/dev/null); do
    emit domain "$uuid" xml "$($V dumpxml "$uuid" | base64 -w0)"
    emit domain "$uuid" state "$($V domstate "$uuid" 2>/dev/null | head -n 1)"
  done
  if $V dominfo "$VM_NAME" > /dev/null 2>&1; then
    emit vm - addresses "$($V domifaddr "$VM_NAME" --source lease 2>/dev/null | base64 -w0)"
  fi
  emit network "$VM_NETWORK" active \
    "$($V net-info "$VM_NETWORK" 2>/dev/null | sed -n 's/^Active: *//p')"
fi
while read -r _source target type options _rest; do
  [ "$type" = hugetlbfs ] && emit mount "$target" options "$options"
done < "$R/proc/mounts"
for path in $VM_PATHS; do [ -e "$R$path" ] && emit path "$path" present -; done
if [ -n "$VM_IMAGE" ] && [ -z "$R" ] && [ -e "$VM_IMAGE" ]; then
  emit image "$VM_IMAGE" info "$(qemu-img info --output=json "$VM_IMAGE" 2>/dev/null | base64 -w0)"
fi
'''


def console_log(name: str) -> str:
    """Where the guest's serial console is written on its host (the acceptance benchmark reads
    the guest's SSH host keys there)."""
    return f"/var/log/libvirt/qemu/vela-{name}-console.log"


def paths(spec: GpuVmArgs) -> dict[str, str]:
    return {"disk": f"{VOLUMES}/{spec.name}.qcow2", "seed": f"{VOLUMES}/{spec.name}-seed.iso",
            "console": console_log(spec.name),
            # what `vela_vm_define` keeps when libvirt refuses a definition
            "failed": f"{FAILED}/{spec.name}.xml"}


def observe_script(spec: GpuVmArgs) -> str:
    where = paths(spec)
    watched = [where["disk"], where["seed"], where["failed"]]
    if spec.kernel_boot:
        watched += [spec.kernel_boot.kernel, spec.kernel_boot.initrd]
    return "\n".join([
        shell.assign("VM_NAME", spec.name), shell.assign("VM_NETWORK", spec.network),
        shell.assign("VM_PATHS", " ".join(watched)),
        shell.assign("VM_IMAGE", spec.image.path if spec.image else ""), _SCRIPT])


@dataclass
class Domain:
    uuid: str
    xml: str
    state: str = ""

    @property
    def root(self):
        """The definition parsed; XML that does not parse is an error naming the domain."""
        return libvirt.parse(self.xml, self.uuid)

    @property
    def name(self) -> str:
        return self.root.findtext("name") or "?"

    @property
    def ours(self) -> bool:
        return owner(self.root) is not None

    @property
    def running(self) -> bool:
        return self.state in {"running", "paused", "in shutdown"}


@dataclass
class VmObservations:
    libvirt_version: tuple[int, ...] | None = None
    validator: bool | None = None  # the host can run virt-xml-validate (None: not observed)
    domains: list[Domain] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    network_active: bool | None = None
    hugetlbfs: dict[str, str] = field(default_factory=dict)  # mount point -> options
    present: set[str] = field(default_factory=set)
    image_format: str | None = None

    def domain(self, name: str) -> Domain | None:
        return next((domain for domain in self.domains if domain.name == name), None)

    def hugetlbfs_for(self, size_kib: int) -> str | None:
        """A hugetlbfs mount serving pages of this size, if any."""
        for mount, options in self.hugetlbfs.items():
            if mount_page_size_kib(options) == size_kib:
                return mount
        return None


# KiB per unit, as libvirt (formatdomain "Memory Allocation": b/bytes, k/KiB, m/MiB, g/GiB,
# t/TiB; KiB when none is given) and the kernel's hugetlbfs mount options (K, M) write them.
UNIT_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "m": 1024, "mib": 1024,
            "g": 1024 ** 2, "gib": 1024 ** 2, "t": 1024 ** 3, "tib": 1024 ** 3}


def kib(value: str | None, unit: str | None) -> int:
    """A libvirt memory size in KiB."""
    return int(int(value or 0) * UNIT_KIB[(unit or "KiB").lower()])


def mount_page_size_kib(options: str) -> int | None:
    """The page size of a hugetlbfs mount from its /proc/mounts options, in KiB.

    The kernel prints it in K or M ("pagesize=1024M" for 1 GiB pages); mount(8) accepts G too.
    A mount without the option serves the default huge page size, which we do not assume.
    """
    for option in options.split(","):
        match = re.fullmatch(r"pagesize=(\d+)([kKmMgG])", option.strip())
        if match:
            return int(match.group(1)) * int(UNIT_KIB[match.group(2).lower()])
    return None


def parse_observations(text: str) -> VmObservations:
    observed = VmObservations()
    domains: dict[str, Domain] = {}
    for kind, subject, name, value in records(text):
        if kind == "libvirt" and name == "version" and value:
            observed.libvirt_version = tuple(int(part) for part in re.findall(r"\d+", value)[:3])
        elif kind == "libvirt" and name == "validator":
            observed.validator = value == "yes"
        elif kind == "domain" and name == "xml":
            domains.setdefault(subject, Domain(subject, "")).xml = decoded(value)
        elif kind == "domain" and name == "state":
            domains.setdefault(subject, Domain(subject, "")).state = value.strip()
        elif kind == "vm" and name == "addresses":
            observed.addresses = re.findall(r"ipv4\s+(\d+\.\d+\.\d+\.\d+)/", decoded(value))
        elif kind == "network" and name == "active":
            observed.network_active = value.strip() == "yes" if value else None
        elif kind == "mount":
            observed.hugetlbfs[subject] = value
        elif kind == "path":
            observed.present.add(subject)
        elif kind == "image":
            info = json.loads(decoded(value) or "{}")
            observed.image_format = info.get("format")
    observed.domains = [domain for domain in domains.values() if domain.xml]
    return observed


def held_devices(domain: Domain) -> list[str]:
    """Host PCI addresses a domain's definition passes through."""
    return libvirt.passthrough_addresses(domain.root)


def taken_devices(observed: VmObservations, except_name: str) -> dict[str, str]:
    return {address: domain.name for domain in observed.domains
            if domain.name != except_name for address in held_devices(domain)}


def owned_fields(xml: str) -> dict:
    """The parts of a domain vela decides, normalised for comparison (libvirt adds aliases,
    addresses and controllers of its own; those are not ours)."""
    root = etree.fromstring(xml.encode())
    cpu = root.find("cpu")
    return {
        "memory": root.findtext("memory"),
        "vcpus": root.findtext("vcpu"),
        "vcpupin": sorted((pin.get("vcpu"), pin.get("cpuset"))
                          for pin in root.iterfind("cputune/vcpupin")),
        "emulatorpin": [pin.get("cpuset") for pin in root.iterfind("cputune/emulatorpin")],
        "cells": sorted((cell.get("id"), cell.get("cpus"), cell.get("memory"))
                        for cell in root.iterfind("cpu/numa/cell")),
        "memnodes": sorted((node.get("cellid"), node.get("nodeset"))
                           for node in root.iterfind("numatune/memnode")),
        "hugepages": [page.get("size") for page in root.iterfind("memoryBacking/hugepages/page")],
        "cpu": (cpu.get("mode"), cpu.findtext("model")) if cpu is not None else None,
        "maxphysaddr": [(m.get("mode"), m.get("bits"), m.get("limit"))
                        for m in root.iterfind("cpu/maxphysaddr")],
        "devices": sorted(libvirt.passthrough_addresses(root)),
        "macs": sorted(mac.get("address") for mac in
                       root.iterfind("devices/interface[@type='hostdev']/mac")),
        "expanders": sorted((c.findtext("target/node"), c.find("target").get("busNr")) for c
                            in root.iterfind("devices/controller[@model='pcie-expander-bus']")),
        "switches": len(root.findall("devices/controller[@model='pcie-switch-upstream-port']")),
        "kernel": (root.findtext("os/kernel"), root.findtext("os/initrd"),
                   root.findtext("os/cmdline")),
        "disks": sorted(source.get("file") for source in root.iterfind("devices/disk/source")),
        # libvirt keeps both as written (domain_conf's formatter, as `virsh dumpxml` shows).
        "clock": (root.find("clock").get("offset") if root.find("clock") is not None else None,
                  sorted((timer.get("name"), timer.get("tickpolicy"), timer.get("present"))
                         for timer in root.iterfind("clock/timer"))),
        "pm": sorted((state.tag, state.get("enabled")) for state in root.iterfind("pm/*")),
    }
