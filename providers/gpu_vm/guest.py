"""The guest's side of the recipe: its OS tuning (layer 5), the NCCL topology file and
environment (layer 6), and the cloud-init NoCloud seed that carries them. Pure except for the
in-memory ISO image.

The tuning is one POSIX sh script, run at every boot: a full cloud image gets it from cloud-init
`write_files` with two systemd units (`vela-guest-tuning.service` early, before any network is
configured: VF names, Max Read Request, MTU, queues, rings, sysctls, the topology file and the
NCCL profile; `vela-guest-gpu.service` later: GPU persistence, clocks, Fabric Manager), and the
lab's minimal initramfs runs the same script from the seed at each boot. Settings a guest cannot
take (no ethtool, no rdma tool, a driver without ring resizing, no NVIDIA tools) are skipped and
logged, never fatal.

Names: NCCL finds a NIC of the topology file by its name (src/graph/xml.cc ncclTopoFillNet looks
a `net` node up by `name` first; src/graph/topo.cc ncclTopoPopulateNics passes the net plugin's
device name: the ibv device name for the IB transport, src/transport/net_ib/init.cc, and the
interface name for sockets, src/transport/net_socket.cc), and drops the file's nets that no
device claimed (ncclTopoTrimXml: no keep="1"). So each VF gets a vela name, `vela0`, `vela1`, ...
in the order of the guest PCI addresses the domain gives the VFs, and the script renames both its
network interface and its RDMA device (two namespaces, one name) at every boot; the file, the
NCCL_IB_HCA and the NCCL_SOCKET_IFNAME use those names (exact match: a leading '=',
net_ib/init.cc and os/linux.cc ncclOsFindInterfaces).
"""

from __future__ import annotations

import hashlib
import io
import json

import pycdlib
from lxml.etree import Element, SubElement, tostring

from ..common import shell
from ..facts.models import HostFacts
from .placement import GuestDevice, GuestSwitch, Layout
from .spec import GpuVmArgs

TUNING_PATH = "/var/lib/vela/guest-tuning.sh"
UNIT_PATH = "/etc/systemd/system/vela-guest-tuning.service"
GPU_UNIT_PATH = "/etc/systemd/system/vela-guest-gpu.service"
PROFILE_PATH = "/etc/profile.d/vela-nccl.sh"
# NCCL's default (src/graph/topo.cc ncclTopoGetSystem reads it when NCCL_TOPO_FILE is unset). It
# is on a tmpfs (/var/run is /run), so the early unit writes it again at every boot.
TOPOLOGY_PATH = "/var/run/nvidia-topologyd/virtualTopology.xml"
VF_NAME = "vela{}"
# Vendors whose VFs get an RDMA device in the guest: Mellanox/NVIDIA ConnectX and BlueField
# (mlx5_core's VFs, with mlx5_ib). Others are sockets-only NICs to NCCL.
RDMA_VENDORS = frozenset({0x15B3})
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
# What every guest gets; `nccl_environment` adds the per-VM names.
NCCL_ENV = {"NCCL_IB_DISABLE": "0", "NCCL_IGNORE_CPU_AFFINITY": "1",
            "NCCL_BUFFSIZE": "67108864", "NCCL_IB_PCI_RELAXED_ORDERING": "1",
            "NCCL_TOPO_FILE": TOPOLOGY_PATH}

_SCRIPT_HEAD = '''#!/bin/sh
# vela guest tuning (recipe layers 5 and 6), run at every boot. `early` (before any network is
# configured): VF names, Max Read Request, MTU, queues, rings, sysctls, NCCL topology and
# profile; `gpu`: persistence, clocks, Fabric Manager; `all` (the default): both. Safe to run
# again: what is already so is left alone, and anything the guest cannot do is logged.
'''

_SCRIPT = r'''R=${VELA_GUEST_ROOT:-}  # "" in a guest; a test's fake guest root
part=${1:-all}
log() { echo "vela-guest-tuning: $*"; }
case $part in
  early|gpu|all) ;;
  *) log "unknown part '$part' (early, gpu or all)"; exit 2 ;;
esac
put() {  # FILE CONTENT: written only where it differs
  if [ -f "$R$1" ] && [ "$(cat "$R$1")" = "$(printf '%s' "$2")" ]; then return 0; fi
  if mkdir -p "$(dirname "$R$1")" && printf '%s' "$2" > "$R$1"; then log "wrote $1"
  else log "cannot write $1"; fi
}
pcie_cap() {  # ADDRESS: offset of the PCI Express capability, walking the capability list
  cfg=$R/sys/bus/pci/devices/$1/config
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
  cfg=$R/sys/bus/pci/devices/$1/config
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
child() {  # ADDRESS CLASS: the VF's network interface (net) or RDMA device (infiniband)
  for entry in "$R/sys/bus/pci/devices/$1/$2/"*; do
    [ -e "$entry" ] && { echo "${entry##*/}"; return 0; }
  done
  return 1
}
rename() {  # CLASS OLD NEW
  if [ "$1" = infiniband ]; then
    # iproute2's rdma (RDMA_NLDEV_CMD_SET with a new name): no state an RDMA device must be in.
    command -v rdma > /dev/null 2>&1 || { log "RDMA $2: no rdma tool to rename it $3"; return 0; }
    if out=$(rdma dev set "$2" name "$3" 2>&1); then log "RDMA $2: renamed $3"
    else log "RDMA $2: cannot rename it $3: $out"; fi
    return 0
  fi
  # The kernel renames only an interface that is down (dev_change_name: EBUSY while IFF_UP).
  flags=$(cat "$R/sys/class/net/$2/flags" 2>/dev/null) || flags=0
  up=$((flags & 1)) now=$2
  [ "$up" = 0 ] || ip link set dev "$2" down 2>/dev/null || :
  if out=$(ip link set dev "$2" name "$3" 2>&1); then log "$2: renamed $3"; now=$3
  else log "$2: cannot rename it $3: $out"; fi
  [ "$up" = 0 ] || ip link set dev "$now" up 2>/dev/null || log "$now: cannot bring it up again"
}
name_vfs() {
  # Two passes, so names can swap when a new seed numbers the VFs differently in a running
  # guest: a VF holding another VF's vela name moves to a temporary one first.
  names=
  for vf in $VFS; do names="$names ${vf#*=}"; done
  index=0
  for vf in $VFS; do
    for class in net infiniband; do
      old=$(child "${vf%%=*}" "$class") || continue
      [ "$old" = "${vf#*=}" ] && continue
      case "$names " in *" $old "*) rename "$class" "$old" "velatmp$index" ;; esac
    done
    index=$((index + 1))
  done
  for vf in $VFS; do
    if ! old=$(child "${vf%%=*}" net); then
      log "${vf%%=*}: no network interface (no VF there, or no driver for it in the guest)"
    elif [ "$old" != "${vf#*=}" ]; then rename net "$old" "${vf#*=}"; fi
    old=$(child "${vf%%=*}" infiniband) && [ "$old" != "${vf#*=}" ] && \
      rename infiniband "$old" "${vf#*=}"
  done
}
ring() {  # `ethtool -g` OUTPUT SECTION KEY: a number from "Pre-set maximums" or "Current ..."
  printf '%s\n' "$1" | sed -n "/^$2/,/^\$/ s/^$3:[[:space:]]*\([0-9][0-9]*\).*/\1/p" | head -n 1
}
tune_netdev() {  # NAME: queue length, MTU, ring sizes
  dir=$R/sys/class/net/$1
  # `qlen`: the spelling both iproute2 and busybox's ip accept. Separately: a VF's MTU needs its
  # PF's consent over the mailbox; the queue does not.
  if [ "$(cat "$dir/tx_queue_len" 2>/dev/null)" = 10000 ]; then :
  elif out=$(ip link set dev "$1" qlen 10000 2>&1); then log "$1: txqueuelen 10000"
  else log "$1: cannot set txqueuelen: $out"; fi
  if [ "$(cat "$dir/mtu" 2>/dev/null)" = "$MTU" ]; then :
  elif out=$(ip link set dev "$1" mtu "$MTU" 2>&1); then log "$1: mtu $MTU"
  else log "$1: cannot set mtu $MTU: $out"; fi
  command -v ethtool > /dev/null 2>&1 || { log "$1: no ethtool, ring sizes left"; return 0; }
  shown=$(ethtool -g "$1" 2>/dev/null) || { log "$1: ring sizes not readable"; return 0; }
  name=$1
  set -- "$name"
  for key in RX TX; do
    max=$(ring "$shown" Pre-set "$key") cur=$(ring "$shown" Current "$key")
    { [ -n "$max" ] && [ -n "$cur" ]; } || continue
    [ "$max" -gt 8192 ] && max=8192
    [ "$cur" -ge "$max" ] || set -- "$@" "$(echo "$key" | tr RXT rxt)" "$max"
  done
  [ $# -gt 1 ] || return 0
  if ethtool -G "$@" > /dev/null 2>&1; then shift; log "$name: rings $*"
  else log "$name: ring sizes not changeable"; fi
}
sysctls() {
  for setting in $SYSCTLS; do
    name=${setting%%=*} value=$(printf '%s' "${setting#*=}" | tr , ' ')
    file=$R/proc/sys/$(printf '%s' "$name" | tr . /)
    [ "$(tr '\t' ' ' 2>/dev/null < "$file")" = "$value" ] && continue
    printf '%s\n' "$value" 2>/dev/null > "$file" || log "sysctl $name not available"
  done
}
clock() {  # GPU WHAT OPTION VALUE
  if out=$(nvidia-smi -i "$1" "$3" "$4" 2>&1); then log "GPU $1: $2"
  else log "GPU $1: $2 not supported: $(printf '%s\n' "$out" | head -n 1)"; fi
}
gpus() {
  if ! command -v nvidia-smi > /dev/null 2>&1; then
    log "no nvidia-smi: GPU persistence and clocks left as they are"; return 0
  fi
  if out=$(nvidia-smi -pm 1 2>&1); then log "GPU persistence mode on"
  else log "cannot turn GPU persistence mode on: $out"; fi
  for gpu in $(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null); do
    # The first pair listed is the highest memory clock with its highest graphics clock.
    pair=$(nvidia-smi -i "$gpu" --query-supported-clocks=mem,gr --format=csv,noheader,nounits \
      2>/dev/null | head -n 1 | tr -d ' ')
    mem=${pair%%,*} gr=${pair#*,}
    case "$mem,$gr" in
      *[!0-9,]*|,*|*,) log "GPU $gpu: no supported clocks listed, clocks left"; continue ;;
    esac
    # Application clocks (Kepler and later), then IBM's locked clocks: graphics (-lgc, Volta
    # and later) and memory (-lmc, Ampere and later). Reset at every reboot or driver reload.
    clock "$gpu" "application clocks $mem,$gr MHz" -ac "$mem,$gr"
    clock "$gpu" "graphics clock locked at $gr MHz" -lgc "$gr,$gr"
    clock "$gpu" "memory clock locked at $mem MHz" -lmc "$mem,$mem"
  done
}
fabric_manager() {  # NVSwitches came along: CUDA needs Fabric Manager running to use NVLink
  [ "$NVLINK" = 1 ] || return 0
  if ! command -v systemctl > /dev/null 2>&1 || \
      ! systemctl cat nvidia-fabricmanager.service > /dev/null 2>&1; then
    log "NVSwitches passed through but no nvidia-fabricmanager unit: no NVLink until it runs"
    return 0
  fi
  # --no-block: its unit may be ordered after targets that wait for the boot this runs in.
  if out=$(systemctl start --no-block nvidia-fabricmanager.service 2>&1); then
    log "Fabric Manager started"
  else log "cannot start nvidia-fabricmanager: $out"; fi
}
if [ "$part" != gpu ]; then
  name_vfs
  for dev in "$R"/sys/bus/pci/devices/*; do
    ids="$(cat "$dev/vendor" 2>/dev/null):$(cat "$dev/device" 2>/dev/null)"
    case " $PASSTHROUGH_IDS " in *" $ids "*) mrrs_4096 "${dev##*/}" ;; esac
  done
  for vf in $VFS; do
    name=$(child "${vf%%=*}" net) && tune_netdev "$name"
  done
  sysctls
  put "$TOPOLOGY" "$TOPOLOGY_XML"
  put "$PROFILE" "$NCCL_LINES"
fi
if [ "$part" != early ]; then
  gpus
  fabric_manager
fi
log "done ($part)"
'''

_UNIT = f"""[Unit]
Description=vela: guest tuning, VF names and the NCCL topology file, at every boot
Documentation=https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html
# Early, like cloud-init's local stage: with default dependencies (After=sysinit.target) this
# unit, before network-pre.target, would close a cycle on Debian and Ubuntu, where cloud-init's
# network stage runs after the network is configured yet before sysinit.target (cloud-init
# systemd/cloud-init-network.service.tmpl: After=networking.service, Before=sysinit.target).
DefaultDependencies=no
# The VFs' names, MTU and queues are set before any network manager configures an interface:
# the way systemd.special(7) and systemd.io/NETWORK_ONLINE give a service to run before the
# network is set up (Before= and Wants= network-pre.target; managers order After= it).
Wants=network-pre.target
Before=network-pre.target
# After udev handled the boot's devices: drivers (mlx5_core, mlx5_ib) bind, and udev's own names
# (.link NamePolicy, rdma-core's rdma_rename) are given, while it processes their add events.
# A name set before that would be renamed again by udev.
Wants=systemd-udev-settle.service
After=systemd-udev-settle.service
# Its sysctls win over /etc/sysctl.d (systemd-sysctl); it writes /etc and reads /var/lib.
After=systemd-sysctl.service local-fs.target
RequiresMountsFor={TUNING_PATH.rsplit("/", 1)[0]}
# What default dependencies would have added for shutdown (systemd.service(5)).
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists={TUNING_PATH}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {TUNING_PATH} early

[Install]
WantedBy=multi-user.target
"""

_GPU_UNIT = f"""[Unit]
Description=vela: GPU persistence mode, clocks and Fabric Manager, at every boot
# Default dependencies: after basic.target, when udev loaded the NVIDIA driver. After the
# persistence daemon where it is installed (an After= on a unit that is not there orders
# nothing, systemd.unit(5)), so the two do not set persistence mode at the same time.
After=vela-guest-tuning.service nvidia-persistenced.service
ConditionPathExists={TUNING_PATH}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {TUNING_PATH} gpu

[Install]
WantedBy=multi-user.target
"""


def units() -> dict[str, str]:
    """The guest's systemd units, by path."""
    return {UNIT_PATH: _UNIT, GPU_UNIT_PATH: _GPU_UNIT}


def device_ids(layout: Layout, facts: HostFacts) -> dict[str, str]:
    """Host address -> vendor:device ("0x15b3:0x101e") for the guest's devices, as the guest's
    sysfs shows them."""
    return {d.host_address: f"0x{facts.pci[d.host_address].vendor_id:04x}:"
            f"0x{facts.pci[d.host_address].device_id:04x}" for d in layout.devices}


def vf_names(layout: Layout) -> dict[str, str]:
    """Host address -> the VF's name in the guest (network interface and RDMA device), in the
    order of the VFs' guest PCI addresses."""
    vfs = sorted((d for d in layout.devices if d.kind == "vf"),
                 key=lambda d: (d.guest_address, d.host_address))
    return {vf.host_address: VF_NAME.format(index) for index, vf in enumerate(vfs)}


def rdma_capable(device: GuestDevice, ids: dict[str, str] | None) -> bool:
    """Whether the guest gets an RDMA device for this VF. Without ids (vendor unknown) every VF
    counts as one, as the recipe assumes RDMA NICs."""
    if ids is None:
        return True
    vendor = ids.get(device.host_address, "").split(":")[0]
    return vendor.startswith("0x") and int(vendor, 16) in RDMA_VENDORS


def _roce(device: GuestDevice) -> bool:
    """An Ethernet VF (RoCE, needing a GID index), not an InfiniBand one (class 0x0207)."""
    return device.pci_class >> 8 != 0x0207


def nccl_environment(spec: GpuVmArgs, layout: Layout,
                     ids: dict[str, str] | None = None) -> dict[str, str]:
    """The NCCL environment of this VM's jobs: the common settings plus its own VF names
    (exact matches), and the GID index where its RDMA VFs are Ethernet (RoCE)."""
    env = dict(NCCL_ENV)
    names = vf_names(layout)
    vfs = sorted((d for d in layout.devices if d.host_address in names),
                 key=lambda d: names[d.host_address])
    if vfs:
        env["NCCL_SOCKET_IFNAME"] = "=" + ",".join(names[vf.host_address] for vf in vfs)
    rdma = [vf for vf in vfs if rdma_capable(vf, ids)]
    if rdma:
        env["NCCL_IB_HCA"] = "=" + ",".join(names[vf.host_address] for vf in rdma)
        if spec.guest.ib_gid_index is not None and any(_roce(vf) for vf in rdma):
            env["NCCL_IB_GID_INDEX"] = str(spec.guest.ib_gid_index)
    return env


def tuning_script(spec: GpuVmArgs, layout: Layout, ids: dict[str, str], topology: str) -> str:
    """`ids`: host address -> vendor:device ("0x10de:0x20b2"), as the guest's sysfs shows."""
    passthrough = sorted({ids[d.host_address] for d in layout.devices})
    guest_of = {d.host_address: d.guest_address for d in layout.devices}
    names = vf_names(layout)
    vfs = " ".join(f"{guest_of[host]}={name}" for host, name in
                   sorted(names.items(), key=lambda item: guest_of[item[0]]))
    sysctls = " ".join(f"{name}={value.replace(' ', ',')}" for name, value in SYSCTLS.items())
    env = "".join(f"export {shell.assign(name, value)}\n"
                  for name, value in nccl_environment(spec, layout, ids).items())
    header = "\n".join([
        shell.assign("PASSTHROUGH_IDS", " ".join(passthrough)), shell.assign("VFS", vfs),
        shell.assign("MTU", spec.guest.mtu), shell.assign("SYSCTLS", sysctls),
        shell.assign("NVLINK", "1" if layout.nvlink else "0"),
        shell.assign("TOPOLOGY", TOPOLOGY_PATH), shell.assign("TOPOLOGY_XML", topology),
        shell.assign("PROFILE", PROFILE_PATH), shell.assign("NCCL_LINES", env)])
    return _SCRIPT_HEAD + header + "\n" + _SCRIPT


# -- NCCL's topology file -------------------------------------------------------------------------

def nccl_topology(layout: Layout, cpu_vendor: str, ids: dict[str, str] | None = None) -> str:
    """NCCL's topology file for the guest: per guest NUMA node, the PCIe switches with their
    GPUs and NICs, by guest address and with each GPU's and NIC's real class. A NIC is named as
    the guest names it (`vf_names`), and is gdr="1" only where its NIC shares a host PCIe
    switch with its GPU and it has an RDMA device (a sockets NIC moves no GPU memory).
    NVSwitches are left out: NCCL learns NVLink from NVML in the guest."""
    names = vf_names(layout)
    system = Element("system", version="1")
    for cell in layout.cells:
        cpu = SubElement(system, "cpu", numaid=str(cell.id), arch="x86_64",
                         vendor=cpu_vendor or "GenuineIntel")
        for complex_ in layout.complexes:
            if complex_.cell != cell.id:
                continue
            for port in complex_.ports:
                devices = [d for d in port.devices if d.kind in ("gpu", "vf")]
                if not devices:
                    continue
                parent = cpu
                if port.switch:
                    parent = _pci(cpu, f"0000:{_switch_bus(port):02x}:00.0", 0x060400)
                for device in devices:
                    node = _pci(parent, device.guest_address, device.pci_class or (
                        0x030200 if device.kind == "gpu" else 0x020000))
                    if device.kind == "vf":
                        name = names[device.host_address]
                        gdr = device.gpudirect and rdma_capable(device, ids)
                        SubElement(SubElement(node, "nic"), "net", name=name,
                                   dev=name.removeprefix(VF_NAME.format("")), port="1",
                                   gdr="1" if gdr else "0")
    return tostring(system, pretty_print=True, encoding="unicode")


def _pci(parent, busid: str, pci_class: int):
    node = SubElement(parent, "pci", busid=busid, link_speed="16.0 GT/s PCIe",
                      link_width="16")
    node.set("class", f"0x{pci_class:06x}")
    return node


def _switch_bus(port: GuestSwitch) -> int:
    first = int(port.devices[0].guest_address.split(":")[1], 16)
    return first - 2  # device bus - 1: the downstream ports' bus; - 2: the upstream port's


# -- the NoCloud seed ----------------------------------------------------------------------------

def user_data(spec: GpuVmArgs, script: str) -> str:
    """cloud-init installs the script and its units (write_files, cloud-init's init stage) and,
    once per instance (runcmd), enables them and restarts them: the early unit may already have
    run this boot with the previous instance's script. A guest without systemd runs the script
    once from runcmd instead."""
    files = [{"path": TUNING_PATH, "permissions": "0755", "content": script}]
    runcmd: list = []
    if spec.guest.tuning:
        files += [{"path": path, "permissions": "0644", "content": content}
                  for path, content in units().items()]
        names = " ".join(shell.quote(path.rsplit("/", 1)[1]) for path in units())
        runcmd = [["sh", "-c", f"{{ systemctl enable {names} && systemctl restart {names}; }} "
                   f"|| sh {shell.quote(TUNING_PATH)}"]]
    document = {
        "users": [{"name": spec.guest.user, "groups": ["sudo"], "shell": "/bin/bash",
                   "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": True,
                   "ssh_authorized_keys": spec.guest.ssh_keys}],
        "write_files": files,
        "runcmd": runcmd,
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
    a file of its own, for guests without cloud-init (the lab's initramfs runs it at each
    boot, in place of the units)."""
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
