"""The shell side of vela: one small library of host actions, and the only way to call it.

Apply scripts, boot-time scripts and observation sections are this library plus calls rendered
by the pure functions below; every value in them passes through `quote`, the one quoting
function (as pytest-testinfra does), and the sysroot is set in one place (`script`). Each call
is one idempotent action that reports what it was doing if it fails. `R` is the sysroot ("" on
a real host); commands that act on the running system rather than on files (modprobe,
systemctl, bootloader tools, sysctl reload, firmware tools) run only on a real root.
"""

from __future__ import annotations

import base64
import shlex

LIBRARY = r'''
# shellcheck disable=SC2317  # a library: each script calls only the functions it needs
set -u
vela_fail() { echo "vela: $*" >&2; exit 1; }
vela_system() {  # run a command that acts on the live system, never against a sysroot
  if [ -z "$R" ]; then "$@"; else echo "vela: sysroot $R: not running: $*" >&2; fi
}
vela_cfg_write() {  # ADDRESS OFFSET VALUE MASK: masked 16-bit config-space write
  cfg="$R/sys/bus/pci/devices/$1/config"
  current=$(od -An -tu2 -j "$2" -N 2 "$cfg" 2>/dev/null | tr -d ' ')
  [ -n "$current" ] || vela_fail "cannot read register $2 of $1"
  new=$(( (current & ~$4) | ($3 & $4) ))
  [ "$new" -eq "$current" ] && return 0
  # Little-endian, as octal escapes that printf's %b turns into bytes (POSIX: \0ddd).
  bytes=$(printf '\\0%03o\\0%03o' $((new & 255)) $((new >> 8)))
  printf '%b' "$bytes" | dd of="$cfg" bs=2 seek=$(($2 / 2)) count=1 conv=notrunc status=none \
    || vela_fail "cannot write register $2 of $1"
}
vela_bind() {  # ADDRESS DRIVER: bind to DRIVER through driver_override ("" = back to default)
  dev="$R/sys/bus/pci/devices/$1"
  [ -e "$dev" ] || vela_fail "no PCI device $1"
  [ -z "$2" ] || vela_system modprobe "$2" || vela_fail "cannot load module $2"
  printf '%s\n' "$2" > "$dev/driver_override" || vela_fail "cannot set driver_override of $1"
  tries=0
  while [ -e "$dev/driver" ]; do  # a driver may still be probing it: retry for a while
    current=$(readlink "$dev/driver"); current=${current##*/}
    [ -n "$2" ] && [ "$current" = "$2" ] && return 0
    printf '%s' "$1" 2>/dev/null > "$R/sys/bus/pci/drivers/$current/unbind" && break
    [ "$tries" -lt 20 ] || vela_fail "cannot unbind $1 from $current"
    tries=$((tries + 1)); sleep 0.5
  done
  printf '%s' "$1" > "$R/sys/bus/pci/drivers_probe" 2>/dev/null || :
  [ -n "$2" ] || return 0
  # The kernel binds within that write (device_attach); a stand-in kernel acts just after it.
  tries=0
  while :; do
    current=$(readlink "$dev/driver" 2>/dev/null); current=${current##*/}
    [ "$current" = "$2" ] && return 0
    [ "$tries" -lt 10 ] || vela_fail "$1 did not bind to $2 (bound to: ${current:-nothing})"
    tries=$((tries + 1)); sleep 0.2
  done
}
vela_module() {  # load|unload MODULE
  if [ "$1" = load ]; then vela_system modprobe "$2" || vela_fail "cannot load module $2"
  else vela_system modprobe -r "$2" || vela_fail "cannot unload module $2 (still in use?)"; fi
}
vela_hugepages() {  # NODE SIZE_KIB COUNT
  pool="$R/sys/devices/system/node/node$1/hugepages/hugepages-$2kB/nr_hugepages"
  printf '%s\n' "$3" > "$pool" || vela_fail "cannot set huge pages of node $1"
}
vela_sysctl() {  # NAME VALUE
  printf '%s\n' "$2" > "$R/proc/sys/$(printf '%s' "$1" | tr . /)" \
    || vela_fail "cannot set sysctl $1"
}
vela_write_file() {  # PATH MODE BASE64: atomic replace, parents created
  mkdir -p "$(dirname "$R$1")" || vela_fail "cannot create the directory of $1"
  tmp=$(mktemp "$R$1.vela-XXXXXX") || vela_fail "cannot write next to $1"
  if printf '%s' "$3" | base64 -d > "$tmp" && chmod "$2" "$tmp" && mv -f "$tmp" "$R$1"; then
    return 0
  fi
  rm -f "$tmp"; vela_fail "cannot write $1"
}
vela_sysfs_write() {  # PATH VALUE: a plain write into an existing sysfs attribute
  printf '%s\n' "$2" > "$R$1" || vela_fail "cannot write $2 to $1"
}
vela_remove_file() { rm -f "$R$1" || vela_fail "cannot remove $1"; }
vela_remove_empty_dirs() {  # DIR...: remove each directory if it is empty (innermost first)
  for dir in "$@"; do rmdir "$R$dir" 2>/dev/null || :; done
}
vela_unit() {  # enable|disable UNIT
  vela_system systemctl daemon-reload || vela_fail "systemctl daemon-reload failed"
  vela_system systemctl "$1" "$2" || vela_fail "cannot $1 $2"
}
vela_bootloader() {  # TOOL: regenerate the boot configuration from /etc/default/grub
  case $1 in
    update-grub) vela_system update-grub ;;
    grub2-mkconfig|grub-mkconfig)
      if [ -e /boot/grub2/grub.cfg ]; then vela_system "$1" -o /boot/grub2/grub.cfg
      else vela_system "$1" -o /boot/grub/grub.cfg; fi ;;
    *) vela_fail "unknown bootloader tool $1" ;;
  esac || vela_fail "$1 failed: the kernel command line change is not installed"
}
vela_grubby() {  # ADD REMOVE: arguments for every installed kernel
  vela_system grubby --update-kernel=ALL ${1:+--args="$1"} ${2:+--remove-args="$2"} \
    || vela_fail "grubby could not change the kernel command line"
}
vela_sriov_numvfs() {  # PF COUNT TIMEOUT: 0 first (the kernel refuses N -> M), then wait
  dev="$R/sys/bus/pci/devices/$1"
  [ -e "$dev/sriov_numvfs" ] || vela_fail "$1 has no SR-IOV capability (no sriov_numvfs)"
  current=$(cat "$dev/sriov_numvfs")
  [ "$current" = "$2" ] && return 0
  if [ "$current" != 0 ]; then
    printf '0\n' > "$dev/sriov_numvfs" || vela_fail "cannot remove the VFs of $1"
  fi
  if [ "$2" != 0 ]; then
    printf '%s\n' "$2" > "$dev/sriov_numvfs" || vela_fail "cannot create $2 VFs on $1"
  fi
  waited=0
  while [ "$(find "$dev/" -maxdepth 1 -name 'virtfn*' | wc -l)" -ne "$2" ]; do
    [ "$waited" -lt "$3" ] || vela_fail "the VFs of $1 did not all appear within $3 s"
    sleep 1; waited=$((waited + 1))
  done
}
vela_vf_set() {  # NETDEV INDEX SETTING VALUE...: one `ip link set NETDEV vf INDEX ...`
  netdev=$1 index=$2; shift 2
  if [ -n "$R" ]; then vela_system ip link set dev "$netdev" vf "$index" "$@"; return 0; fi
  out=$(ip link set dev "$netdev" vf "$index" "$@" 2>&1) \
    || vela_fail "VF $index of $netdev: cannot set $*: ${out:-failed}" \
         "(the driver may not support it)"
}
vela_pf_netdev() {  # PF: print the PF's network interface name (waits for the driver to bind)
  waited=0
  while :; do
    for entry in "$R/sys/bus/pci/devices/$1"/net/*; do
      [ -e "$entry" ] && { echo "${entry##*/}"; return 0; }
    done
    [ "$waited" -lt "${2:-60}" ] || vela_fail "$1 has no network interface (is its driver loaded?)"
    sleep 1; waited=$((waited + 1))
  done
}
vela_mtu() {  # ADDRESS MTU: the MTU of a PCI function's network interface
  netdev=$(vela_pf_netdev "$1" 30) || exit 1
  if [ -n "$R" ]; then vela_system ip link set dev "$netdev" mtu "$2"; return 0; fi
  out=$(ip link set dev "$netdev" mtu "$2" 2>&1) || vela_fail "cannot set MTU $2 on $netdev: $out"
}
vela_link() {  # ADDRESS up|down: the administrative state of a PCI function's interface
  netdev=$(vela_pf_netdev "$1" 30) || exit 1
  if [ -n "$R" ]; then vela_system ip link set dev "$netdev" "$2"; return 0; fi
  out=$(ip link set dev "$netdev" "$2" 2>&1) || vela_fail "cannot set $netdev $2: $out"
}
vela_wait_vfio() {  # ADDRESS TIMEOUT: wait for the device's /dev/vfio/GROUP node
  [ -z "$R" ] || return 0
  group=$(readlink "/sys/bus/pci/devices/$1/iommu_group"); group=${group##*/}
  waited=0
  while [ ! -c "/dev/vfio/$group" ]; do
    [ "$waited" -lt "$2" ] || vela_fail "/dev/vfio/$group of $1 did not appear within $2 s"
    sleep 1; waited=$((waited + 1))
  done
}
vela_virsh() {  # ARGS...: one virsh command against the system libvirt
  if [ -n "$R" ]; then vela_system virsh "$@"; return 0; fi
  out=$(vela_v "$@" 2>&1) || vela_fail "virsh $*: $out"
}
vela_firmware() {  # TOOL DEVICE NAME=VALUE...
  tool=$1 device=$2; shift 2
  if [ -n "$R" ]; then vela_system "$tool" -d "$device" -y set "$@"; return 0; fi
  out=$("$tool" -d "$device" -y set "$@" 2>&1) || vela_fail "$tool set on $device failed: $out"
  case $out in *"-E-"*) vela_fail "$tool set on $device failed: $out" ;; esac
}
vela_v() { virsh -c qemu:///system "$@"; }  # the system libvirt
vela_vm_file() {  # PATH BASE64: a guest file written atomically, readable by QEMU
  if ! { mkdir -p "$(dirname "$1")" && printf '%s' "$2" | base64 -d > "$1.tmp" \
         && chmod 0644 "$1.tmp" && mv -f "$1.tmp" "$1"; }; then
    vela_fail "cannot write $1"
  fi
}
vela_vm_disk() {  # BASE FORMAT DISK SIZE: a copy-on-write volume on the base image
  mkdir -p "$(dirname "$3")"
  [ -e "$3" ] || qemu-img create -q -f qcow2 -F "$2" -b "$1" "$3" "$4" \
    || vela_fail "cannot create $3 on $1"
}
vela_vm_define() {  # NAME XML_BASE64 OTHERS: define, validated by the host's own libvirt
  # schema, under the host's placement lock and only if the other domains are still those the
  # placement saw (OTHERS: their names, sorted, each followed by a space). Else exit 75
  # (EX_TEMPFAIL): GpuVm places again with what the other domain took. When virsh refuses
  # the definition, the XML it tried is kept in /var/lib/vela/failed/NAME.xml (the last
  # failure per domain, replaced by the next, removed once a define succeeds) and the message
  # names it; the directory is touched only under the lock.
  xml="$R/run/vela-domain-$1.xml"
  kept="/var/lib/vela/failed/$1.xml"
  printf '%s' "$2" | base64 -d > "$xml"
  mkdir -p "$R/run/lock"
  exec 9> "$R/run/lock/vela-gpu-vm.lock"
  flock -w 900 9 || { rm -f "$xml"; vela_fail "the placement lock is held for 900 s"; }
  others=$(vela_v -q list --all --name | grep -v -x -F -e "$1" -e '' | LC_ALL=C sort \
    | tr '\n' ' ')
  if [ "$others" != "$3" ]; then
    rm -f "$xml"; exec 9>&-
    echo "vela: placement raced: other domains now '$others', placed with '$3'" >&2; exit 75
  fi
  if ! out=$(vela_v define --validate "$xml" 2>&1); then
    if mkdir -p "$R${kept%/*}" && mv -f "$xml" "$R$kept"; then
      where="its XML is kept at $kept; \`virt-xml-validate $kept domain\` shows schema errors"
    else
      rm -f "$xml"; where="its XML could not be kept in ${kept%/*}"
    fi
    exec 9>&-
    vela_fail "virsh define $1 failed ($where):
$out"
  fi
  rm -f "$xml" "$R$kept"; rmdir "$R${kept%/*}" 2> /dev/null; exec 9>&-
}
vela_vm_validate() {  # NAME XML_BASE64: the domain against this host's libvirt schema,
  # before anything is written. virt-xml-validate (libvirt-clients, tools/virt-xml-validate.in)
  # runs xmllint --relaxng on /usr/share/libvirt/schemas/domain.rng, from stdin with "-".
  out=$(printf '%s' "$2" | base64 -d | virt-xml-validate - domain 2>&1) \
    || vela_fail "domain $1 does not validate against this host's libvirt schema, so nothing" \
                 "was changed (virt-xml-validate): $out"
}
vela_vm_stop() {  # NAME TIMEOUT: graceful shutdown with a deadline, then power off
  state=$(vela_v domstate "$1" 2>/dev/null | head -n 1)
  [ "$state" = "shut off" ] && return 0
  vela_v shutdown "$1" > /dev/null 2>&1 || :
  waited=0
  while [ "$waited" -lt "$2" ]; do
    [ "$(vela_v domstate "$1" 2>/dev/null | head -n 1)" = "shut off" ] && return 0
    sleep 2; waited=$((waited + 2))
  done
  vela_v destroy "$1" > /dev/null 2>&1 || :
}
vela_vm_start_running() {  # NAME TIMEOUT: start a shut-off guest, until libvirt says running
  state=$(vela_v domstate "$1" 2>/dev/null | head -n 1)
  if [ "$state" != running ]; then
    out=$(vela_v start "$1" 2>&1) || vela_fail "virsh start $1: $out"
  fi
  waited=0
  until [ "$(vela_v domstate "$1" 2>/dev/null | head -n 1)" = running ]; do
    [ "$waited" -lt "$2" ] || vela_fail "guest $1 is not running $2 s after its start"
    sleep 2; waited=$((waited + 2))
  done
}
vela_vm_wait_address() {  # NAME TIMEOUT: until the guest holds a DHCP lease
  waited=0
  while [ "$waited" -lt "$2" ]; do
    vela_v domifaddr "$1" --source lease 2>/dev/null | grep -q ipv4 && return 0
    sleep 3; waited=$((waited + 3))
  done
  vela_fail "guest $1 has no address after $2 s (is it booting? see its console log)"
}
'''


# Helpers for observation sections appended to gather.sh (which defines `emit` and `$R`).
OBSERVE_LIBRARY = r'''
observe_file() {
  if [ -f "$R$1" ]; then emit file "$1" content "$(base64 -w0 < "$R$1")"
  else emit file "$1" absent -; fi
}
observe_link() { if [ -L "$R$1" ] || [ -e "$R$1" ]; then emit link "$1" present -; fi; }
'''


class Var(str):
    """A shell variable set earlier in the same script, passed as one word: `"$name"`."""

    def __new__(cls, name: str) -> Var:
        return super().__new__(cls, _identifier(name))


def quote(value: object) -> str:
    """The one quoting function: any value as one shell word."""
    if isinstance(value, Var):
        return f'"${value}"'
    return shlex.quote(str(value))


def call(function: str, *args: object) -> str:
    """`function arg...`, every argument quoted."""
    return " ".join([function, *(quote(arg) for arg in args)])


def assign(name: str, value: object) -> str:
    """`name='value'`: quoted even where a word needs no quotes, so that no reader (or
    shellcheck, SC2100) takes `pool-a` for arithmetic."""
    word = quote(value)
    if not word.startswith(("'", '"')):
        word = f"'{word}'"  # nothing in it needs escaping: quote() left it bare
    return f"{_identifier(name)}={word}"


def capture(name: str, function: str, *args: object) -> str:
    """`name=$(function arg...)`: a call's output kept for later calls (as `Var(name)`); the
    script stops if the call fails (its message is already on stderr)."""
    return f"{_identifier(name)}=$({call(function, *args)}) || exit 1"


def write_file(path: str, content: str, mode: int = 0o644) -> str:
    return call("vela_write_file", path, f"{mode:o}", base64.b64encode(content.encode()).decode())


def script(calls: list[str], *, sysroot: str = "/") -> str:
    """The library and `calls`, acting on `sysroot` ("/": the live system). The one place the
    sysroot is set: `R`, which every action puts before the paths it touches."""
    root = assign("R", "" if sysroot in ("", "/") else sysroot)
    return LIBRARY + "\n".join([root, *calls]) + "\n"


def boot_script(header: str, calls: list[str], *, keep_going: bool = False) -> str:
    """An executable script for a boot unit. With `keep_going`, each call runs in a subshell
    and a failure (a device gone) does not stop the others; the script still exits non-zero."""
    if keep_going:
        calls = [assign("status", 0), *(f"({action}) || status=1" for action in calls),
                 'exit "$status"']
    return "#!/bin/sh\n" + header + script(calls)


def _identifier(name: str) -> str:
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"not a shell variable name: {name!r}")
    return name
