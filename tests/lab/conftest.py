"""Lab tests boot emulated hosts: `booted_lab` boots a lab and always tears it down, and
`host_snapshot` is what a test compares to prove a host was left as found. The `lab` fixture
(tests/conftest.py) is one host shared by the whole session."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

from lab.hosts import Lab

# What vela may change on a lab host, one line per fact: compare before and after to prove a
# delete left the host as it found it.
HOST_SNAPSHOT = r'''
set -u
echo "cmdline $(cat /proc/cmdline)"
for path in /etc/default/grub /boot/grub/grub.cfg; do echo "file $path $(sha256sum < $path)"; done
find /etc/modprobe.d /etc/modules-load.d /etc/sysctl.d /etc/systemd/system /usr/local/sbin \
     /var/lib/vela -mindepth 1 2>/dev/null | sort | while read -r path; do
  if [ -L "$path" ]; then echo "link $path $(readlink "$path")"
  elif [ -f "$path" ]; then echo "file $path $(sha256sum < "$path")"
  else echo "dir $path"; fi
done
for dev in /sys/bus/pci/devices/*; do
  case $(cat $dev/vendor):$(cat $dev/device) in 0x1af4:0x1110|0x8086:0x10c9) ;; *) continue ;; esac
  driver=$(readlink $dev/driver 2>/dev/null); echo "pci ${dev##*/} driver=${driver##*/}" \
    "override=$(cat $dev/driver_override) config=$(od -An -tx1 -N 256 $dev/config | tr -d ' \n')"
  [ -e $dev/sriov_numvfs ] && echo "pci ${dev##*/} numvfs=$(cat $dev/sriov_numvfs)"
  [ ! -e $dev/sriov_numvfs ] || mstconfig-standin -d ${dev##*/} -e q | sed 's/^/firmware /'
done
for pool in /sys/devices/system/node/node*/hugepages/hugepages-*; do
  echo "hugepages $pool $(cat $pool/nr_hugepages)"
done
echo "sysctl swappiness $(cat /proc/sys/vm/swappiness)"
echo "module vfio_pci $(grep -c '^vfio_pci ' /proc/modules)"
echo "domains $(virsh -q list --all --name | sort | xargs)"
for pool in $(virsh -q pool-list --all --name); do
  echo "pool $pool $(virsh -q vol-list "$pool" 2>/dev/null | awk '{print $1}' | sort | xargs)"
done
'''


def host_snapshot(host) -> list[str]:
    return host.run_script(HOST_SNAPSHOT, timeout=120).text.splitlines()


# The labs booted now: a test that fails shows the end of each host's console (tests/conftest.py)
# while the hosts are still there, so a host that never came back says why.
LIVE_LABS: list[Lab] = []


def console_tails(lines: int = 40) -> str:
    """The last `lines` of each live lab host's console."""
    tails = []
    for lab in LIVE_LABS:
        for host in lab.hosts():
            console = host.spec.path("console.log")
            text = console.read_text(errors="replace") if console.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            tails.append(f"--- {host.name} console ({console}), last {lines} lines ---\n{tail}")
    return "\n".join(tails)


@contextmanager
def booted_lab(tmp_path_factory, hosts: int = 1):
    """A lab of `hosts` booted hosts in a fresh directory, always torn down; each host's
    console log stays in that directory (`lab-N-console.log`)."""
    lab = Lab(tmp_path_factory.mktemp("lab"))
    LIVE_LABS.append(lab)
    try:
        lab.up(hosts)
        yield lab
    finally:
        LIVE_LABS.remove(lab)
        for host in lab.hosts():
            console = host.spec.path("console.log")
            if console.exists():
                shutil.copyfile(console, lab.directory / f"{host.name}-console.log")
        lab.down()
