"""What HostTuning reads from a host besides the hardware facts, in the same round trip.

`observe_script(spec)` renders extra sections for gather.sh (files vela manages, bootloader and
firmware tools, sysctls, loaded modules, firmware queries); `parse_observations` turns their
records into `Observations`. Every value placed in the script is validated and quoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..common import libvirt, shell
from ..common.domains import DEFAULT_SHUTDOWN_TIMEOUT, owner, shutdown_timeout
from ..common.records import decoded, records
from ..common.selectors import PRESETS
from .firmware import FirmwareDevice, FirmwareOutputError, parse_query
from .spec import HostTuningArgs

GRUB_DEFAULTS = "/etc/default/grub"
MODPROBE_CONF = "/etc/modprobe.d/vela-host-tuning.conf"
MODULES_CONF = "/etc/modules-load.d/vela-host-tuning.conf"
SYSCTL_CONF = "/etc/sysctl.d/90-vela-host-tuning.conf"
BOOT_SCRIPT = "/usr/local/sbin/vela-host-tuning-boot"
UNIT_NAME = "vela-host-tuning.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT_NAME}"
UNIT_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
ORIGINALS_FILE = "/var/lib/vela/host-tuning/originals.json"
ORIGINALS_DIRS = ["/var/lib/vela/host-tuning", "/var/lib/vela"]  # removed when left empty
MANAGED_FILES = [MODPROBE_CONF, MODULES_CONF, SYSCTL_CONF, BOOT_SCRIPT, UNIT_FILE]
WATCHED_MODULES = ["nouveau", "nvidia", "vfio_pci"]
BOOTLOADER_TOOLS = ["grubby", "update-grub", "grub2-mkconfig", "grub-mkconfig"]
FIRMWARE_TOOLS = ["mlxconfig", "mstconfig"]

_FUNCTIONS = r'''
# -- HostTuning observations ----------------------------------------------------------------------
observe_sysctl() {
  path=$(printf '%s' "$1" | tr . /)
  if [ -r "$R/proc/sys/$path" ]; then emit sysctl "$1" value "$(cat "$R/proc/sys/$path")"; fi
}
observe_tools() {
  for tool in "$@"; do
    found=$(command -v "$tool" 2>/dev/null) && emit tool "$tool" path "$found"
  done
}
find_firmware_tool() {  # [TOOL]: sets fwtool to TOOL, else mlxconfig or mstconfig if installed
  fwtool=${1:-$(command -v mlxconfig 2>/dev/null || command -v mstconfig 2>/dev/null || :)}
}
observe_firmware() {  # TOOL BDF: the tool's query of one device (none without a tool)
  [ -n "$1" ] || return 0
  out=$("$1" -d "$2" -e q 2>&1) && rc=0 || rc=$?
  emit firmware "$2" rc "$rc"
  emit firmware "$2" output "$(printf '%s\n' "$out" | base64 -w0)"
}
observe_firmware_matching() {  # TOOL VENDOR DEVICE|*: function 0 of each matching device
  [ -n "$1" ] || return 0
  for dev in "$R"/sys/bus/pci/devices/*.0; do
    if [ ! -e "$dev" ] || [ -e "$dev/physfn" ]; then continue; fi
    first_line "$dev/vendor"; [ "$v" = "0x$2" ] || continue
    first_line "$dev/device"; [ "$3" = "*" ] || [ "$v" = "0x$3" ] || continue
    observe_firmware "$1" "${dev##*/}"
  done
}
first_line "$R/proc/sys/kernel/random/boot_id"; emit host - boot_id "$v"
if [ -r "$R/proc/modules" ]; then
  while read -r module _rest; do
    case " $WATCHED_MODULES " in *" $module "*) emit module "$module" loaded - ;; esac
  done < "$R/proc/modules"
fi
# Running guests, which a reboot would kill: their definitions say whose they are.
if [ -z "$R" ] && command -v virsh > /dev/null 2>&1; then
  for uuid in $(virsh -c qemu:///system -q list --state-running --uuid 2>/dev/null); do
    emit running "$uuid" xml "$(virsh -c qemu:///system dumpxml "$uuid" 2>/dev/null | base64 -w0)"
  done
fi
if command -v grubby > /dev/null 2>&1 && [ "$R" = "" ]; then
  emit grubby - args "$(grubby --info=DEFAULT 2>/dev/null \
    | sed -n 's/^args="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p')"
fi
'''


def observe_script(spec: HostTuningArgs) -> str:
    """The extra gather sections for this spec."""
    lines = [shell.assign("WATCHED_MODULES", " ".join(WATCHED_MODULES)),
             shell.OBSERVE_LIBRARY, _FUNCTIONS]
    lines += [shell.call("observe_file", path)
              for path in [GRUB_DEFAULTS, *MANAGED_FILES, ORIGINALS_FILE]]
    lines.append(shell.call("observe_link", UNIT_LINK))
    lines.append(shell.call("observe_tools", *BOOTLOADER_TOOLS, *FIRMWARE_TOOLS))
    lines += [shell.call("observe_sysctl", name) for name in spec.sysctls]
    if spec.firmware.enabled is not False:
        tool = "" if spec.firmware.tool == "auto" else spec.firmware.tool
        lines.append(shell.call("find_firmware_tool", tool))
        fwtool = shell.Var("fwtool")
        for vendor, device in firmware_targets(spec):
            if ":" in vendor:  # a PCI address
                lines.append(shell.call("observe_firmware", fwtool, vendor))
            else:
                lines.append(shell.call("observe_firmware_matching", fwtool, vendor, device))
    return "\n".join(lines) + "\n"


def firmware_targets(spec: HostTuningArgs) -> list[tuple[str, str]]:
    """(vendor hex, device hex or *) or (PCI address, "") of the devices to query: the NIC
    selectors, limited to Mellanox/NVIDIA ones unless firmware is explicitly enabled."""
    targets: list[tuple[str, str]] = []
    for selector in spec.nic_selector:
        if selector in PRESETS:
            pairs = [(f"{vendor:04x}", f"{device:04x}" if device is not None else "*")
                     for vendor, device, _ in PRESETS[selector]]
        elif ":" in selector and selector.count(":") == 1:
            vendor, device = selector.split(":")
            pairs = [(vendor, device)]
        else:
            # A PCI address: the tool configures a NIC through its function 0, whichever
            # function the stack selected.
            pairs = [(selector.rsplit(".", 1)[0] + ".0", "")]
        for pair in pairs:
            if spec.firmware.enabled is None and pair[1] != "" and pair[0] != "15b3":
                continue
            if pair not in targets:
                targets.append(pair)
    return targets


@dataclass
class FirmwareQuery:
    exit_code: int
    output: str
    device: FirmwareDevice | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunningDomain:
    """A running libvirt guest: vela's (GpuVm made it) or someone else's."""

    name: str
    ours: bool
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT


def running_domain(uuid: str, xml: str) -> RunningDomain | None:
    """None for a guest that stopped between the listing and its dumpxml (no XML)."""
    if not xml.strip():
        return None
    root = libvirt.parse(xml, uuid)
    return RunningDomain(name=root.findtext("name") or "?", ours=owner(root) is not None,
                         shutdown_timeout=shutdown_timeout(root))


@dataclass
class Observations:
    boot_id: str = ""
    files: dict[str, str | None] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)
    tools: dict[str, str] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    modules: set[str] = field(default_factory=set)
    grubby_args: str | None = None
    firmware: dict[str, FirmwareQuery] = field(default_factory=dict)
    running: list[RunningDomain] = field(default_factory=list)  # libvirt guests running now

    @property
    def unit_enabled(self) -> bool:
        return UNIT_LINK in self.links

    @property
    def bootloader(self) -> str | None:
        for tool in BOOTLOADER_TOOLS:
            if tool in self.tools:
                return tool
        return None


def parse_observations(text: str) -> Observations:
    observed = Observations()
    for kind, subject, name, value in records(text):
        if kind == "host" and name == "boot_id":
            observed.boot_id = value
        elif kind == "file":
            observed.files[subject] = decoded(value) if name == "content" else None
        elif kind == "link":
            observed.links.add(subject)
        elif kind == "tool":
            observed.tools[subject] = value
        elif kind == "sysctl":
            observed.sysctls[subject] = " ".join(value.split())
        elif kind == "module":
            observed.modules.add(subject)
        elif kind == "grubby":
            observed.grubby_args = value
        elif kind == "firmware":
            _firmware(observed, subject, name, value)
        elif kind == "running" and name == "xml":
            domain = running_domain(subject, decoded(value))
            if domain is not None:
                observed.running.append(domain)
    return observed


def _firmware(observed: Observations, device: str, name: str, value: str) -> None:
    query = observed.firmware.setdefault(device, FirmwareQuery(exit_code=-1, output=""))
    if name == "rc":
        query.exit_code = int(value)
    elif name == "output":
        query.output = decoded(value)
        try:
            query.device = parse_query(query.output)[0]
        except FirmwareOutputError as exc:
            query.error = str(exc)
