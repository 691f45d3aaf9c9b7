"""The guest's first boot: the recipe's guest OS tuning (layer 5), the NCCL topology file and
environment (layer 6), and the cloud-init NoCloud seed that carries them. Pure except for the
in-memory ISO image.

The tuning is one POSIX sh script, so a full cloud image (cloud-init runs it from `runcmd`) and
the lab's minimal initramfs (which runs it straight from the seed) do exactly the same thing.
Settings a guest cannot take (no ethtool, a driver without ring resizing, no NVIDIA tools) are
skipped and logged, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json

import pycdlib
from lxml.etree import Element, SubElement, tostring

from ..common import shell
from .placement import Layout
from .spec import GpuVmArgs

TUNING_PATH = "/var/lib/vela/guest-tuning.sh"
TOPOLOGY_PATH = "/var/run/nvidia-topologyd/virtualTopology.xml"
SYSCTLS = {
    "net.ipv4.conf.all.arp_filter": "1", "net.ipv4.conf.default.arp_filter": "1",
    "net.ipv4.conf.all.arp_ignore": "2", "net.ipv4.conf.default.arp_ignore": "2",
    "net.ipv4.conf.all.arp_announce": "1", "net.ipv4.conf.default.arp_announce": "1",
    "net.ipv4.tcp_timestamps": "0", "net.ipv4.tcp_sack": "1",
    "net.core.rmem_max": "4194304", "net.core.wmem_max": "4194304",
    "net.core.rmem_default": "4194304", "net.core.wmem_default": "4194304",
    "net.core.optmem_max": "4194304", "net.ipv4.tcp_rmem": "4096 87380 4194304",
    "net.ipv4.tcp_wmem": "4096 65536 4194304", "net.ipv4.tcp_low_latency": "1",
}
NCCL_ENV = {"NCCL_IB_DISABLE": "0", "NCCL_IGNORE_CPU_AFFINITY": "1",
            "NCCL_BUFFSIZE": "67108864", "NCCL_IB_PCI_RELAXED_ORDERING": "1",
            "NCCL_TOPO_FILE": TOPOLOGY_PATH}

_SCRIPT = r'''#!/bin/sh
# vela guest tuning (recipe layer 5). Safe to run again; anything the guest cannot do is logged.
log() { echo "vela-guest-tuning: $*"; }
pcie_cap() {  # ADDRESS: offset of the PCI Express capability, walking the capability list
  cfg=/sys/bus/pci/devices/$1/config
  ptr=$(od -An -tu1 -j 52 -N 1 "$cfg" | tr -d ' ')
  while [ -n "$ptr" ] && [ "$ptr" -ge 64 ]; do
    # shellcheck disable=SC2046  # two numbers (capability id, next pointer), split on purpose
    set -- $(od -An -tu1 -j "$ptr" -N 2 "$cfg")
    [ "$1" = 16 ] && { echo "$ptr"; return 0; }
    ptr=$2
  done
  return 1
}
mrrs_4096() {  # ADDRESS: Max Read Request 4096 (Device Control 14:12 = 101b), a masked write
  cfg=/sys/bus/pci/devices/$1/config
  cap=$(pcie_cap "$1") || { log "$1: no PCIe capability"; return 0; }
  off=$((cap + 8))
  cur=$(od -An -tu2 -j "$off" -N 2 "$cfg" | tr -d ' ')
  new=$(( (cur & ~28672) | 20480 ))
  [ "$new" -eq "$cur" ] && return 0
  # The format is the two octal escapes just built from numbers (busybox's printf knows them
  # in the format; its %b is not relied on).
  # shellcheck disable=SC2059
  if printf "$(printf '\\%03o\\%03o' $((new & 255)) $((new >> 8)))" | \
      dd of="$cfg" bs=2 seek=$((off / 2)) count=1 conv=notrunc 2>/dev/null; then
    log "$1: Max Read Request 4096"
  else
    log "$1: cannot set Max Read Request"
  fi
}
for dev in /sys/bus/pci/devices/*; do
  ids="$(cat "$dev/vendor" 2>/dev/null):$(cat "$dev/device" 2>/dev/null)"
  case " $PASSTHROUGH_IDS " in *" $ids "*) mrrs_4096 "${dev##*/}" ;; esac
  case " $NIC_IDS " in
    *" $ids "*)
      for net in "$dev"/net/*; do
        [ -e "$net" ] || continue
        name=${net##*/}
        # Separately: a VF's MTU needs its PF's consent over the mailbox; the queue does not.
        # `qlen`: the spelling both iproute2 and busybox's ip accept.
        if out=$(ip link set dev "$name" qlen 10000 2>&1); then log "$name: txqueuelen 10000"
        else log "$name: cannot set txqueuelen: $out"; fi
        if out=$(ip link set dev "$name" mtu "$MTU" 2>&1); then log "$name: mtu $MTU"
        else log "$name: cannot set mtu $MTU: $out"; fi
        if ! command -v ethtool > /dev/null 2>&1; then :
        elif ethtool -G "$name" rx 8192 tx 8192 2>/dev/null; then log "$name: rings 8192"
        else log "$name: ring sizes not changeable"; fi
      done ;;
  esac
done
for setting in $SYSCTLS; do
  name=${setting%%=*} value=$(printf '%s' "${setting#*=}" | tr , ' ')
  printf '%s\n' "$value" > "/proc/sys/$(printf '%s' "$name" | tr . /)" 2>/dev/null \
    || log "sysctl $name not available"
done
if command -v nvidia-smi > /dev/null 2>&1; then
  nvidia-smi -pm 1 && log "GPU persistence mode on"
  clocks=$(nvidia-smi --query-supported-clocks=mem,gr --format=csv,noheader,nounits | head -n 1)
  [ -n "$clocks" ] && nvidia-smi -ac "$(echo "$clocks" | tr -d ' ')" && log "clocks $clocks"
fi
mkdir -p "$(dirname "$TOPOLOGY")" && printf '%s' "$TOPOLOGY_XML" > "$TOPOLOGY"
printf '%s\n' "$NCCL_LINES" > /etc/profile.d/vela-nccl.sh 2>/dev/null || :
log "done"
'''


def tuning_script(spec: GpuVmArgs, layout: Layout, ids: dict[str, str], topology: str) -> str:
    """`ids`: host address -> vendor:device ("0x10de:0x20b2"), as the guest's sysfs shows."""
    passthrough = sorted({ids[d.host_address] for d in layout.devices})
    nics = sorted({ids[d.host_address] for d in layout.devices if d.kind == "vf"})
    sysctls = " ".join(f"{name}={value.replace(' ', ',')}" for name, value in SYSCTLS.items())
    env = "\n".join(f"export {shell.assign(name, value)}" for name, value in NCCL_ENV.items())
    header = "\n".join([
        shell.assign("PASSTHROUGH_IDS", " ".join(passthrough)),
        shell.assign("NIC_IDS", " ".join(nics)), shell.assign("MTU", spec.guest.mtu),
        shell.assign("SYSCTLS", sysctls), shell.assign("TOPOLOGY", TOPOLOGY_PATH),
        shell.assign("TOPOLOGY_XML", topology), shell.assign("NCCL_LINES", env)])
    body = _SCRIPT.split("\n", 2)
    return "\n".join([body[0], body[1], header, body[2]])


def nccl_topology(layout: Layout, cpu_vendor: str) -> str:
    """NCCL's topology file for the guest: per guest NUMA node, the PCIe switches with their
    GPUs and NICs (gdr="1" where a NIC shares a switch with GPUs), by guest address."""
    system = Element("system", version="1")
    for cell in layout.cells:
        cpu = SubElement(system, "cpu", numaid=str(cell.id), arch="x86_64",
                         vendor=cpu_vendor or "GenuineIntel")
        for complex_ in layout.complexes:
            if complex_.cell != cell.id:
                continue
            for port in complex_.ports:
                parent = cpu
                if port.switch:
                    parent = SubElement(cpu, "pci", busid=f"0000:{_switch_bus(port):02x}:00.0",
                                        class_="0x060400", link_speed="16.0 GT/s PCIe",
                                        link_width="16")
                    parent.attrib["class"] = parent.attrib.pop("class_")
                has_gpu = any(device.kind == "gpu" for device in port.devices)
                for device in port.devices:
                    node = SubElement(parent, "pci", busid=device.guest_address,
                                      link_speed="16.0 GT/s PCIe", link_width="16")
                    node.set("class", "0x030200" if device.kind == "gpu" else "0x020000")
                    if device.kind == "vf":
                        nic = SubElement(node, "nic")
                        SubElement(nic, "net", name=f"vf-{device.host_address}", dev="0",
                                   port="1", gdr="1" if has_gpu else "0")
    return tostring(system, pretty_print=True, encoding="unicode")


def _switch_bus(port) -> int:
    first = int(port.devices[0].guest_address.split(":")[1], 16)
    return first - 2  # device bus - 1: the downstream ports' bus; - 2: the upstream port's


# -- the NoCloud seed ----------------------------------------------------------------------------

def user_data(spec: GpuVmArgs, script: str) -> str:
    document = {
        "users": [{"name": spec.guest.user, "groups": ["sudo"], "shell": "/bin/bash",
                   "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": True,
                   "ssh_authorized_keys": spec.guest.ssh_keys}],
        "write_files": [{"path": TUNING_PATH, "permissions": "0755", "content": script}],
        "runcmd": [["sh", TUNING_PATH]] if spec.guest.tuning else [],
    }
    # JSON is YAML; cloud-init reads it after the #cloud-config line.
    return "#cloud-config\n" + json.dumps(document, indent=1) + "\n"


def meta_data(spec: GpuVmArgs, user_data_text: str) -> str:
    """The instance id changes with the user data: cloud-init runs its first-boot modules once
    per instance id, so a changed guest configuration takes effect at the next boot."""
    digest = hashlib.sha256(user_data_text.encode()).hexdigest()[:12]
    return f"instance-id: vela-{spec.name}-{digest}\nlocal-hostname: {spec.name}\n"


def seed_image(spec: GpuVmArgs, script: str) -> bytes:
    """An ISO 9660 image labelled cidata: cloud-init's NoCloud seed. The tuning script is also
    a file of its own, for guests without cloud-init (the lab's initramfs runs it)."""
    user = user_data(spec, script)
    files = {"user-data": user, "meta-data": meta_data(spec, user),
             "vela-guest-tuning.sh": script if spec.guest.tuning else "#!/bin/sh\n"}
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, content) in enumerate(sorted(files.items())):
        data = content.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{index};1", rr_name=name,
                   joliet_path=f"/{name}")
    output = io.BytesIO()
    iso.write_fp(output)
    iso.close()
    return output.getvalue()
