# shellcheck shell=sh
# Gather every hardware fact vela needs from a Linux host, in one exec.
#
# Usage: sh -s -- ROOT < gather.sh     (ROOT is "/" on a real host, a fake tree in tests)
#
# Prints one record per line: KIND <TAB> SUBJECT <TAB> FIELD <TAB> VALUE. Parsed by
# providers/facts/parse.py; change both together. The caller appends its own sections (they can
# use `emit` and `first_line`) and the end marker (`emit meta - end ok`). Reads only; writes
# nothing. Hosts run it with `sh` (dash on Debian), so it is POSIX sh, and the directive on the
# first line has it checked as such. Uses shell builtins wherever it can (a real host has
# hundreds of PCI functions): a handful of processes in all (gzip and base64 for every config
# space at once, two `find` runs for every sysfs link, one `cat` per NUMA node), however many
# devices there are.
set -u
R=${1:-/}
R=${R%/}

emit() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4"; }

# first_line FILE: sets $v to the first line of FILE, empty when missing or unreadable.
first_line() { v=; [ -r "$1" ] && { IFS= read -r v < "$1" || :; } 2>/dev/null; :; }

emit meta - format 1

# -- host ---------------------------------------------------------------------------------------
first_line "$R/proc/sys/kernel/hostname"; emit host - hostname "$v"
first_line "$R/proc/sys/kernel/osrelease"; emit host - kernel "$v"
first_line "$R/proc/cmdline"; emit host - cmdline "$v"
if [ -r "$R/proc/cpuinfo" ]; then
  vendor_seen='' bits_seen='' flags_seen=''
  while IFS= read -r line; do
    case $line in
      vendor_id*) [ -n "$vendor_seen" ] || emit host - cpu_vendor "${line#*: }"; vendor_seen=1 ;;
      "address sizes"*) [ -n "$bits_seen" ] || emit host - address_sizes "${line#*: }"; bits_seen=1 ;;
      flags*)  # of the first CPU, only those vela looks at ("vmx flags" is another line)
        if [ -z "$flags_seen" ]; then
          found=''
          for flag in vmx svm hypervisor; do
            case " ${line#*:} " in *" $flag "*) found="$found $flag" ;; esac
          done
          emit host - cpu_flags "${found# }"
        fi
        flags_seen=1 ;;
    esac
    [ -n "$vendor_seen" ] && [ -n "$bits_seen" ] && [ -n "$flags_seen" ] && break
  done < "$R/proc/cpuinfo"
fi
if [ -e "$R/dev/kvm" ]; then emit host - kvm_device yes; else emit host - kvm_device no; fi
# Kernel lockdown (Secure Boot): "none [integrity] confidentiality". Root only (mode 0600).
first_line "$R/sys/kernel/security/lockdown"; emit host - lockdown "$v"
# Daemons that keep NVIDIA GPUs open, by /proc/PID/comm (names cut to 15 characters).
holders=''
for comm in "$R"/proc/[0-9]*/comm; do
  first_line "$comm"  # a process that ended in the meantime reads as empty
  case $v in
    nvidia-persiste|nv-fabricmanage|nv-hostengine)
      case " $holders " in *" $v "*) ;; *) holders="$holders $v" ;; esac ;;
  esac
done
emit host - gpu_holders "${holders# }"
if [ -r "$R/proc/meminfo" ]; then
  while read -r key value _unit; do
    case $key in MemTotal:|Hugepagesize:) emit meminfo - "${key%:}" "$value" ;; esac
  done < "$R/proc/meminfo"
fi

# -- IOMMU: the ACPI table the firmware published, the units the kernel brought up, the groups --
for table in DMAR IVRS; do
  [ -e "$R/sys/firmware/acpi/tables/$table" ] && emit iommu - acpi_table "$table"
done
for unit in "$R"/sys/class/iommu/*; do
  [ -e "$unit" ] && emit iommu - unit "${unit##*/}"
done
groups=0
for group in "$R"/sys/kernel/iommu_groups/*; do
  [ -e "$group" ] && groups=$((groups + 1))
done
emit iommu - groups "$groups"

# -- NUMA nodes, their memory and huge pages ----------------------------------------------------
for node in "$R"/sys/devices/system/node/node[0-9]*; do
  [ -d "$node" ] || continue
  id=${node##*/node}
  # cpulist is a binary sysfs attribute on recent kernels: it answers a 1-byte read (the way
  # `read` consumes input) with end-of-file, so it needs a real reader.
  emit node "$id" cpulist "$(cat "$node/cpulist" 2>/dev/null)"
  if [ -r "$node/meminfo" ]; then
    while read -r _node _id key value _unit; do
      [ "$key" = MemTotal: ] && emit node "$id" memtotal_kib "$value"
    done < "$node/meminfo"
  fi
  for pool in "$node"/hugepages/hugepages-*kB; do
    [ -d "$pool" ] || continue
    first_line "$pool/nr_hugepages"; total=$v
    first_line "$pool/free_hugepages"
    size=${pool##*/hugepages-}
    emit node "$id" hugepages "${size%kB} $total $v"
  done
done

# -- PCI functions ------------------------------------------------------------------------------
# pci_functions: each function's attributes and config space; fails when functions came or went
# while it read them (below).
pci_functions() {
  listed=$(printf '%s\n' "$R"/sys/bus/pci/devices/*)
  set --
  order=
  for dev in "$R"/sys/bus/pci/devices/*; do
    [ -e "$dev" ] || continue
    addr=${dev##*/}
    for attr in vendor device class subsystem_vendor subsystem_device numa_node \
                sriov_totalvfs sriov_numvfs driver_override; do
      [ -e "$dev/$attr" ] || continue
      first_line "$dev/$attr"; emit pci "$addr" "$attr" "$v"
    done
    if [ -r "$dev/resource" ]; then  # BAR sizes (64-bit arithmetic, no process started)
      bars='' index=0
      while read -r start end _flags; do
        size=$((end - start + 1)); [ "$end" = 0x0000000000000000 ] && size=0
        [ "$index" -lt 6 ] && bars="$bars$size,"
        index=$((index + 1))
      done < "$dev/resource"
      emit pci "$addr" bars "${bars%,}"
    fi
    for netdev in "$dev"/net/*; do
      [ -e "$netdev" ] && emit pci "$addr" net "${netdev##*/}"
    done
    if [ -r "$dev/config" ]; then
      set -- "$@" "$dev/config"
      order="$order $addr"
    fi
  done
  # Config spaces are mostly zeros: one gzip member per function (in `order`), all in one stream.
  # A function that vanished after it was listed (a VF removed by another operation on this host,
  # as the engine runs a node's pools at once) leaves no member and shifts the rest: gzip says so
  # (its status, passed on as a '!' outside the base64 alphabet) and the caller reads again.
  if [ $# -gt 0 ]; then
    emit pci - config_order "${order# }"
    gz=$( { { gzip -n -1 -c -- "$@" 2>/dev/null || printf '!' >&3; } | base64 -w0; } 3>&1)
    case $gz in *!*) return 1 ;; esac
    emit pci - config_gzip "$gz"
  fi
  # Functions gone or come while their attributes were read: a partial record; read again.
  [ "$(printf '%s\n' "$R"/sys/bus/pci/devices/*)" = "$listed" ]
}
# Read again when functions came or went meanwhile (up to 3 times, a second apart): what is
# printed is one consistent reading. Still changing after that: say so (parse.py makes it an
# error that names the cause).
tries=1
until pci=$(pci_functions); do
  if [ "$tries" -ge 3 ]; then
    pci="$pci
$(emit pci - config_changing "$tries")"
    break
  fi
  tries=$((tries + 1))
  sleep 1
done
printf '%s\n' "$pci"
# Where each function sits in the tree (its chain of upstream bridges) and its driver, IOMMU
# group and SR-IOV links, all from two processes.
if [ -d "$R/sys/bus/pci/devices" ]; then
  find "$R/sys/bus/pci/devices/" -mindepth 1 -maxdepth 1 -type l -printf "pci\t%f\tsysfs_path\t%l\n"
  set -- "$R"/sys/bus/pci/devices/*
  [ -e "$1" ] && find -H "$@" -mindepth 1 -maxdepth 1 -type l \( -name driver -o \
    -name iommu_group -o -name physfn -o -name 'virtfn*' \) -printf "pcilink\t%h\t%f\t%l\n"
fi
