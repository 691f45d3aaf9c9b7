"""What SriovPool reads besides the hardware facts, in the same round trip: the PF's VF settings
(`ip -j -d link show`), the /dev/vfio nodes, every libvirt domain's XML (to know who uses a VF),
the pool's libvirt network, and the files SriovPool manages (boot unit and script, libvirt hook,
originals). Parsing is pure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..common import libvirt, shell
from ..common.records import decoded, records
from .spec import SriovPoolArgs

_SCRIPT = r'''
# -- SriovPool observations ------------------------------------------------------------------------
case $POOL_PF in
  *:*:*.*) pfaddr=$POOL_PF ;;
  *) pfaddr=$(readlink "$R/sys/class/net/$POOL_PF/device" 2>/dev/null); pfaddr=${pfaddr##*/} ;;
esac
emit pool - pf "$pfaddr"
netdev=
if [ -n "$pfaddr" ] && [ -d "$R/sys/bus/pci/devices/$pfaddr" ]; then
  first_line "$R/sys/bus/pci/devices/$pfaddr/sriov_drivers_autoprobe"; emit pool - autoprobe "$v"
  for entry in "$R/sys/bus/pci/devices/$pfaddr"/net/*; do
    [ -e "$entry" ] && netdev=${entry##*/} && emit pool - netdev "$netdev"
  done
  pfdir=$R/sys/bus/pci/devices/$pfaddr
  for entry in "$pfdir"/net/* "$pfdir"/virtfn*/net/*; do
    [ -e "$entry/mtu" ] || continue
    first_line "$entry/mtu"; emit mtu "${entry##*/}" value "$v"
  done
fi
if [ -z "$R" ]; then
  [ -n "$netdev" ] && emit pool - iplink "$(ip -j -d link show dev "$netdev" | base64 -w0)"
  for node in /dev/vfio/*; do [ -c "$node" ] && emit vfio "${node##*/}" present -; done
  if command -v virsh > /dev/null 2>&1; then
    V="virsh -c qemu:///system"
    for uuid in $($V -q list --all --uuid 2>/dev/null); do
      emit domain "$uuid" xml "$($V dumpxml "$uuid" | base64 -w0)"
    done
    if [ -n "$POOL_NETWORK" ] && $V net-info "$POOL_NETWORK" > /dev/null 2>&1; then
      emit network "$POOL_NETWORK" info "$($V net-info "$POOL_NETWORK" | base64 -w0)"
      emit network "$POOL_NETWORK" xml \
        "$($V net-dumpxml --inactive "$POOL_NETWORK" | base64 -w0)"
    fi
  fi
fi
'''


def unit_name(spec: SriovPoolArgs) -> str:
    return f"vela-sriov-{re.sub(r'[^A-Za-z0-9]', '-', spec.pf)}.service"


# libvirt runs every executable here on each qemu hook event (since 6.5; libvirt docs/hooks.rst).
HOOK_DIR = "/etc/libvirt/hooks/qemu.d"


def paths(spec: SriovPoolArgs) -> dict[str, str]:
    stem = re.sub(r"[^A-Za-z0-9]", "-", spec.pf)
    return {"unit": f"/etc/systemd/system/{unit_name(spec)}",
            "link": f"/etc/systemd/system/multi-user.target.wants/{unit_name(spec)}",
            "script": f"/usr/local/sbin/vela-sriov-{stem}",
            "hook": f"{HOOK_DIR}/vela-sriov-{stem}",
            "originals": f"/var/lib/vela/sriov/{stem}.json"}


ORIGINALS_DIRS = ["/var/lib/vela/sriov", "/var/lib/vela"]


def observe_script(spec: SriovPoolArgs) -> str:
    where = paths(spec)
    lines = [shell.assign("POOL_PF", spec.pf),
             shell.assign("POOL_NETWORK", spec.network.name if spec.network else ""),
             shell.OBSERVE_LIBRARY, _SCRIPT]
    lines += [shell.call("observe_file", where[key])
              for key in ("unit", "script", "hook", "originals")]
    lines.append(shell.call("observe_link", where["link"]))
    return "\n".join(lines) + "\n"


@dataclass
class VfState:
    index: int
    mac: str | None = None
    vlan: int = 0
    qos: int = 0
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: str | None = None


@dataclass
class NetworkState:
    name: str
    active: bool = False
    autostart: bool = False
    xml: str = ""


@dataclass
class PoolObservations:
    pf: str | None = None
    netdev: str | None = None
    autoprobe: str | None = None
    vfs: dict[int, VfState] = field(default_factory=dict)
    vfio_groups: set[int] = field(default_factory=set)
    domains: dict[str, str] = field(default_factory=dict)  # uuid -> XML
    network: NetworkState | None = None
    files: dict[str, str | None] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)
    mtus: dict[str, int] = field(default_factory=dict)  # interface -> MTU
    pf_up: bool | None = None  # the PF's administrative state (None: not seen)


def parse_observations(text: str) -> PoolObservations:
    observed = PoolObservations()
    network: dict[str, str] = {}
    for kind, subject, name, value in records(text):
        if kind == "pool" and name == "pf":
            observed.pf = value or None
        elif kind == "pool" and name == "netdev":
            observed.netdev = value
        elif kind == "pool" and name == "autoprobe":
            observed.autoprobe = value
        elif kind == "pool" and name == "iplink":
            observed.vfs = parse_ip_link(decoded(value))
            observed.pf_up = parse_admin_up(decoded(value))
        elif kind == "vfio" and subject.isdigit():
            observed.vfio_groups.add(int(subject))
        elif kind == "domain" and name == "xml":
            observed.domains[subject] = decoded(value)
        elif kind == "network":
            network["name"] = subject
            network[name] = decoded(value)
        elif kind == "file":
            observed.files[subject] = decoded(value) if name == "content" else None
        elif kind == "link":
            observed.links.add(subject)
        elif kind == "mtu" and value.isdigit():
            observed.mtus[subject] = int(value)
    if network:
        info = network.get("info", "")
        observed.network = NetworkState(
            name=network["name"], xml=network.get("xml", ""),
            active=bool(re.search(r"^Active:\s+yes", info, re.M)),
            autostart=bool(re.search(r"^Autostart:\s+yes", info, re.M)))
    return observed


def parse_ip_link(text: str) -> dict[int, VfState]:
    """VF settings from `ip -j -d link show dev PF` (iproute2's JSON: `vfinfo_list`)."""
    try:
        document = json.loads(text)
    except ValueError:
        return {}
    link = document[0] if isinstance(document, list) and document else {}
    states = {}
    for entry in link.get("vfinfo_list", []):
        vlans = [vlan for vlan in entry.get("vlan_list", []) if vlan]
        mac = entry.get("address")
        states[entry["vf"]] = VfState(
            index=entry["vf"], mac=None if mac in (None, "00:00:00:00:00:00") else mac,
            vlan=vlans[0].get("vlan", 0) if vlans else 0,
            qos=vlans[0].get("qos", 0) if vlans else 0,
            spoofchk=entry.get("spoofchk"), trust=entry.get("trust"),
            link_state=entry.get("link_state"))
    return states


def parse_admin_up(text: str) -> bool | None:
    """Whether `ip -j link show` reports the interface administratively up (flag UP)."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    link = document[0] if isinstance(document, list) and document else {}
    flags = link.get("flags")
    return "UP" in flags if isinstance(flags, list) else None


def domains_using(domains: dict[str, str], addresses: set[str],
                  network: str | None) -> dict[str, list[str]]:
    """Domain name -> what it holds of the pool: VFs by address, or the pool's network."""
    users: dict[str, list[str]] = {}
    for uuid, xml in domains.items():
        if not xml.strip():
            continue  # undefined between `virsh list` and its `virsh dumpxml`: holds nothing
        root = libvirt.parse(xml, uuid)
        name = root.findtext("name") or "?"
        held = [address for address in libvirt.passthrough_addresses(root)
                if address in addresses]
        for source in root.iterfind(".//devices/interface[@type='network']/source"):
            if network and source.get("network") == network:
                held.append(f"network {network}")
        if held:
            users[name] = sorted(set(held))
    return users
