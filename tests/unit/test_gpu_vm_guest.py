"""The guest side of GpuVm: its units checked by the real `systemd-analyze verify`, its tuning
script run for real (sh) against a fake guest sysfs with stand-in ip, rdma, ethtool, nvidia-smi
and systemctl that act on that sysfs as the kernel would, and the names NCCL sees: the topology
file's nets, NCCL_IB_HCA and NCCL_SOCKET_IFNAME are the names the script gives the VFs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from lxml import etree

from providers.facts import gather_facts
from providers.gpu_vm import guest
from providers.gpu_vm.placement import Layout, place
from providers.gpu_vm.spec import GpuVmArgs
from providers.host import LocalHost
from tests.support.hgx import hgx_a100

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _spec(**values) -> GpuVmArgs:
    return GpuVmArgs.model_validate({"address": "10.0.0.1", "hostKey": HOST_KEY,
                                     "image": {"path": "/x.qcow2"}, **values})


@pytest.fixture(scope="module")
def hgx():
    """An 8-GPU HGX guest with one ConnectX VF under each of four GPU switches."""
    host, layout = hgx_a100(nic_vfs=2, hugepages_1g_per_node=512)
    facts = gather_facts(LocalHost(str(host.write(tempfile.mkdtemp(prefix="hgx-")))))
    vfs = [{"address": facts.device(pf).virtfns[0].address} for pf in layout.nic_pfs[::2]]
    spec = _spec(name="hgx-vm", vcpus=64, memoryGib=512, gpus=8, vfs=vfs)
    placed = place(spec, facts, {})
    return spec, placed, guest.device_ids(placed, facts)


def _vfs(layout: Layout):
    return [d for d in layout.devices if d.kind == "vf"]


# -- names, gdr, environment ---------------------------------------------------------------------

def test_topology_names_are_the_names_the_script_gives(hgx):
    spec, layout, ids = hgx
    names = guest.vf_names(layout)
    assert sorted(names.values()) == ["vela0", "vela1", "vela2", "vela3"]
    by_guest = sorted(_vfs(layout), key=lambda d: d.guest_address)
    assert [names[d.host_address] for d in by_guest] == ["vela0", "vela1", "vela2", "vela3"]
    topology = etree.fromstring(guest.nccl_topology(layout, "GenuineIntel", ids).encode())
    nets = {net.getparent().getparent().get("busid"): net.get("name")
            for net in topology.iter("net")}
    assert nets == {d.guest_address: names[d.host_address] for d in _vfs(layout)}
    script = guest.tuning_script(spec, layout, ids, "<system/>")
    assert "VFS='" + " ".join(f"{d.guest_address}={names[d.host_address]}"
                              for d in by_guest) + "'" in script
    env = guest.nccl_environment(spec, layout, ids)
    assert env["NCCL_IB_HCA"] == env["NCCL_SOCKET_IFNAME"] == "=vela0,vela1,vela2,vela3"


def test_gdr_only_where_nic_and_gpu_share_a_host_switch_and_the_vf_does_rdma(hgx):
    _, layout, ids = hgx
    layout = layout.model_copy(deep=True)
    apart = _vfs(layout)[0]
    apart.gpudirect = False
    name = guest.vf_names(layout)[apart.host_address]

    def gdr(ids_):
        topology = etree.fromstring(guest.nccl_topology(layout, "GenuineIntel", ids_).encode())
        return {net.get("name"): net.get("gdr") for net in topology.iter("net")}

    assert gdr(ids) == {n: "0" if n == name else "1" for n in guest.vf_names(layout).values()}
    sockets_only = {address: "0x8086:0x10ca" if address in guest.vf_names(layout) else value
                    for address, value in ids.items()}
    assert set(gdr(sockets_only).values()) == {"0"}


def test_gpu_class_is_the_devices_own(hgx):
    _, layout, ids = hgx
    layout = layout.model_copy(deep=True)
    vga = next(d for d in layout.devices if d.kind == "gpu")
    vga.pci_class = 0x030000  # an L40S: VGA compatible controller
    topology = etree.fromstring(guest.nccl_topology(layout, "AuthenticAMD", ids).encode())
    classes = {pci.get("busid"): pci.get("class") for pci in topology.iter("pci")}
    assert classes[vga.guest_address] == "0x030000"
    assert {classes[d.guest_address] for d in layout.devices if d.kind == "gpu"} == \
        {"0x030000", "0x030200"}
    nvswitches = {d.guest_address for d in layout.devices if d.kind == "nvswitch"}
    assert nvswitches and not nvswitches & set(classes)


def test_each_vm_has_its_own_environment(hgx):
    spec, layout, ids = hgx
    one = layout.model_copy(deep=True)
    one.devices = [d for d in one.devices if d.kind != "vf" or d is _vfs(one)[1]]
    env = guest.nccl_environment(spec, one, ids)
    assert env["NCCL_IB_HCA"] == env["NCCL_SOCKET_IFNAME"] == "=vela0"
    assert env["NCCL_IB_GID_INDEX"] == "3" and env["NCCL_TOPO_FILE"] == guest.TOPOLOGY_PATH
    assert "NCCL_IB_GID_INDEX" not in guest.nccl_environment(
        spec.model_copy(update={"guest": spec.guest.model_copy(update={"ib_gid_index": None})}),
        one, ids)
    infiniband = one.model_copy(deep=True)
    for vf in _vfs(infiniband):
        vf.pci_class = 0x020700  # a ConnectX port in InfiniBand mode: no GID index to pick
    assert "NCCL_IB_GID_INDEX" not in guest.nccl_environment(spec, infiniband, ids)
    # A VF without RDMA (the lab's igb VF): named the same way, with no RDMA settings.
    igb = {address: "0x8086:0x10ca" if address in guest.vf_names(one) else value
           for address, value in ids.items()}
    env = guest.nccl_environment(spec, one, igb)
    assert env["NCCL_SOCKET_IFNAME"] == "=vela0"
    assert "NCCL_IB_HCA" not in env and "NCCL_IB_GID_INDEX" not in env
    none = one.model_copy(update={"devices": [d for d in one.devices if d.kind != "vf"]})
    assert guest.nccl_environment(spec, none, ids) == guest.NCCL_ENV


# -- the units -------------------------------------------------------------------------------------

def _unit_root(root: Path) -> Path:
    if shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir():
        pytest.fail("systemd-analyze and the system's units are needed: run scripts/setup")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for path, content in guest.units().items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(content)
    script = root / guest.TUNING_PATH.lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy(os.path.realpath("/bin/sh"), root / "bin/sh")  # verify checks ExecStart's file
    return root


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True)


UNITS = [Path(path).name for path in guest.units()]
# Stand-ins with the orderings of a Debian cloud image's network stage: cloud-init's
# (systemd/cloud-init-network.service.tmpl, debian variant) and ifupdown's networking.service.
STAND_INS = {
    "cloud-init-network.service": "[Unit]\nDefaultDependencies=no\nAfter=networking.service\n"
                                  "Before=sysinit.target\n",
    "networking.service": "[Unit]\nDefaultDependencies=no\nAfter=network-pre.target "
                          "local-fs.target\nBefore=network.target\n",
}


def test_units_pass_systemd_analyze_verify(tmp_path):
    root = _unit_root(tmp_path)
    result = _verify(root, *UNITS)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_early_unit_runs_before_networking_without_a_cycle(tmp_path):
    """With default dependencies the early unit would be after sysinit.target, which a Debian
    cloud image's network stage precedes while following networking: the real systemd finds
    that cycle. Without them, none."""
    root = _unit_root(tmp_path)
    for name, unit in STAND_INS.items():
        (root / "etc/systemd/system" / name).write_text(
            unit + "\n[Service]\nType=oneshot\nExecStart=/bin/sh -c :\n")
    result = _verify(root, *UNITS, *STAND_INS)
    assert result.returncode == 0, result.stderr
    early = root / guest.UNIT_PATH.lstrip("/")
    early.write_text(early.read_text().replace("DefaultDependencies=no\n", ""))
    result = _verify(root, *UNITS, *STAND_INS)
    assert result.returncode != 0 and "ordering cycle" in result.stderr, result.stderr


def test_user_data_installs_the_units_and_starts_them(hgx):
    spec, layout, ids = hgx
    script = guest.tuning_script(spec, layout, ids, "<system/>")
    text = guest.user_data(spec, script)
    document = json.loads(text.split("\n", 1)[1])
    files = {entry["path"]: entry for entry in document["write_files"]}
    assert files[guest.TUNING_PATH]["content"] == script
    assert {path: files[path]["content"] for path in guest.units()} == guest.units()
    command, = document["runcmd"]
    assert command[:2] == ["sh", "-c"]
    assert "systemctl enable vela-guest-tuning.service vela-guest-gpu.service" in command[2]
    assert "systemctl restart vela-guest-tuning.service" in command[2]
    off = json.loads(guest.user_data(spec.model_copy(update={
        "guest": spec.guest.model_copy(update={"tuning": False})}), script).split("\n", 1)[1])
    assert off["runcmd"] == [] and [f["path"] for f in off["write_files"]] == [guest.TUNING_PATH]


# -- the script, run against a fake guest ----------------------------------------------------------

STUB = '''#!{python}
"""A stand-in for {tool}: records its arguments, acts on the fake sysfs under VELA_GUEST_ROOT."""
import os, sys
from pathlib import Path
root = Path(os.environ["VELA_GUEST_ROOT"])
args = sys.argv[1:]
with open(os.environ["VELA_CALLS"], "a") as log:
    log.write(" ".join(["{tool}", *args]) + "\\n")
net = root / "sys/class/net"
'''

IP = '''
# ip link set dev NAME (down|up|name NEW|mtu N|qlen N): as the kernel, renaming only a link
# that is down (EBUSY) and to a free name (EEXIST): net/core/dev.c dev_change_name() returns
# -EBUSY for an IFF_UP device (unless IFF_LIVE_RENAME_OK, which VF drivers do not set) and
# dev_get_valid_name() -EEXIST for a name in use; iproute2 prints "RTNETLINK answers: ...".
assert args[:3] == ["link", "set", "dev"], args
name, verb = args[3], args[4]
link = net / name
if not link.exists():
    sys.exit(f"Cannot find device \\"{name}\\"")
flags = int((link / "flags").read_text(), 16)
if verb in ("up", "down"):
    flags = flags | 1 if verb == "up" else flags & ~1
    (link / "flags").write_text(hex(flags) + "\\n")
elif verb == "name":
    new = args[5]
    if flags & 1:
        sys.exit("RTNETLINK answers: Device or resource busy")
    if (net / new).exists():
        sys.exit("RTNETLINK answers: File exists")
    target = link.resolve()
    target.rename(target.parent / new)
    link.unlink()
    (net / new).symlink_to(os.path.relpath(target.parent / new, net))
else:
    (link / {"mtu": "mtu", "qlen": "tx_queue_len"}[verb]).write_text(args[5] + "\\n")
'''

RDMA = '''
# rdma dev set OLD name NEW: drivers/infiniband/core/device.c ib_device_rename() refuses a name
# another device has (-EEXIST) and, unlike a netdev, allows renaming a device in use.
assert args[:2] == ["dev", "set"] and args[3] == "name", args
for device in root.glob("sys/bus/pci/devices/*/infiniband/" + args[2]):
    if (device.parent / args[4]).exists() or list(root.glob(
            "sys/bus/pci/devices/*/infiniband/" + args[4])):
        sys.exit("error: File exists")
    device.rename(device.parent / args[4])
    break
else:
    sys.exit("Wrong device name")
'''

ETHTOOL = '''
rings = net / args[1] / "rings"  # the stand-in's state: "RX TX"
rx, tx = (rings.read_text().split() if rings.exists() else ["1024", "1024"])
if args[0] == "-g":
    print(f"Ring parameters for {args[1]}:\\nPre-set maximums:\\nRX:\\t\\t8192\\nRX Mini:\\tn/a\\n"
          f"TX:\\t\\t8192\\nCurrent hardware settings:\\nRX:\\t\\t{rx}\\nRX Mini:\\tn/a\\n"
          f"TX:\\t\\t{tx}\\n")
else:
    values = dict(zip(args[2::2], args[3::2]))
    rings.write_text(f"{values.get('rx', rx)} {values.get('tx', tx)}\\n")
'''

NVIDIA_SMI = '''
if "--query-gpu=index" in args:
    print("0\\n1")
elif any(a.startswith("--query-supported-clocks") for a in args):
    print("1593, 1410\\n1593, 1395\\n1215, 1410")
elif "-lmc" in args:
    sys.exit("Setting locked memory clocks is not supported for GPU 00000000:83:00.0.")
'''

SYSTEMCTL = '''
if args[0] == "cat" and not (root / "fabricmanager").exists():
    sys.exit("No files found for nvidia-fabricmanager.service.")
'''


BASE_TOOLS = ("cat", "od", "tr", "dd", "mkdir", "dirname", "sed", "head")


def _pci_config(devctl: int) -> bytes:
    """256 bytes of config space with one capability, PCI Express (id 0x10), at 0x40."""
    config = bytearray(256)
    config[0x06] = 0x10  # Status: capabilities list
    config[0x34] = 0x40
    config[0x40:0x42] = bytes([0x10, 0x00])
    config[0x48:0x4A] = devctl.to_bytes(2, "little")
    return bytes(config)


def _fake_guest(root: Path, layout: Layout, ids: dict[str, str], up: str | None) -> None:
    """The guest as it boots: each device at its guest address; each VF with the kernel's
    interface name (up if named `up`) and, for a ConnectX VF, its mlx5 RDMA device."""
    net = root / "sys/class/net"
    net.mkdir(parents=True)
    for index, device in enumerate(layout.devices):
        path = root / "sys/bus/pci/devices" / device.guest_address
        path.mkdir(parents=True)
        vendor, device_id = ids[device.host_address].split(":")
        (path / "vendor").write_text(vendor + "\n")
        (path / "device").write_text(device_id + "\n")
        (path / "config").write_bytes(_pci_config(0x2810))  # MRRS 512, as firmware leaves it
        if device.kind != "vf":
            continue
        name = f"ens{index}"
        (path / "net" / name).mkdir(parents=True)
        (path / "net" / name / "mtu").write_text("1500\n")
        (path / "net" / name / "tx_queue_len").write_text("1000\n")
        (path / "net" / name / "flags").write_text("0x1003\n" if name == up else "0x1002\n")
        (net / name).symlink_to(os.path.relpath(path / "net" / name, net))
        if vendor == "0x15b3":
            (path / "infiniband" / f"mlx5_{index}").mkdir(parents=True)
    for name in guest.SYSCTLS:
        file = root / "proc/sys" / name.replace(".", "/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("0\n")


class Guest:
    def __init__(self, root: Path, tools: Path, script: str):
        self.root, self.tools, self.calls = root, tools, root.parent / "calls"
        self.script = root.parent / "tuning.sh"
        self.script.write_text(script)

    def run(self, *args: str) -> tuple[str, list[str]]:
        self.calls.write_text("")
        result = subprocess.run(
            [shutil.which("sh"), str(self.script), *args], capture_output=True, text=True,
            timeout=60,
            env={"PATH": f"{self.tools}:{self.tools.parent / 'base'}",
                 "VELA_GUEST_ROOT": str(self.root),
                 "VELA_CALLS": str(self.calls), "LC_ALL": "C"})
        assert result.returncode == 0 and result.stderr == "", result.stderr
        return result.stdout, self.calls.read_text().splitlines()

    def names(self) -> dict[str, tuple[str, ...]]:
        """Guest address -> (interface, RDMA device) names as the fake sysfs has them now."""
        devices = self.root / "sys/bus/pci/devices"
        return {path.name: tuple(p.name for kind in ("net", "infiniband")
                                 for p in sorted(path.glob(f"{kind}/*")))
                for path in sorted(devices.iterdir()) if (path / "net").exists()}

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()


def _guest(tmp_path: Path, spec: GpuVmArgs, layout: Layout, ids: dict[str, str],
           topology: str, up: str | None = None) -> Guest:
    tools, base = tmp_path / "tools", tmp_path / "base"
    tools.mkdir()
    base.mkdir()
    # The script's PATH: the stand-ins and the basic tools it uses, nothing else of this
    # machine's (its real ip or rdma must never act on the machine running the tests).
    for tool in BASE_TOOLS:
        (base / tool).symlink_to(shutil.which(tool))
    for tool, body in {"ip": IP, "rdma": RDMA, "ethtool": ETHTOOL, "nvidia-smi": NVIDIA_SMI,
                       "systemctl": SYSTEMCTL}.items():
        (tools / tool).write_text(STUB.format(python=sys.executable, tool=tool) + body)
        (tools / tool).chmod(0o755)
    root = tmp_path / "root"
    _fake_guest(root, layout, ids, up)
    return Guest(root, tools, guest.tuning_script(spec, layout, ids, topology))


def test_the_script_names_tunes_and_writes_then_a_second_run_changes_nothing(tmp_path, hgx):
    spec, layout, ids = hgx
    topology = guest.nccl_topology(layout, "GenuineIntel", ids)
    names = guest.vf_names(layout)
    first = min(_vfs(layout), key=lambda d: d.guest_address)
    up = f"ens{layout.devices.index(first)}"
    vm = _guest(tmp_path, spec, layout, ids, topology, up=up)
    out, calls = vm.run("early")
    assert vm.names() == {d.guest_address: (names[d.host_address],) * 2 for d in _vfs(layout)}
    # The interface that was up went down for its rename and came back up.
    assert calls[:3] == [f"ip link set dev {up} down", f"ip link set dev {up} name vela0",
                         "ip link set dev vela0 up"]
    assert f"rdma dev set mlx5_{layout.devices.index(first)} name vela0" in calls
    for name in names.values():
        link = vm.root / "sys/class/net" / name
        assert (link / "mtu").read_text() == "9000\n"
        assert (link / "tx_queue_len").read_text() == "10000\n"
        assert (link / "rings").read_text() == "8192 8192\n"
        assert f"vela-guest-tuning: {name}: rings rx 8192 tx 8192" in out
    assert (vm.root / "sys/class/net/vela0/flags").read_text() == "0x1003\n"
    for device in layout.devices:
        config = (vm.root / "sys/bus/pci/devices" / device.guest_address / "config").read_bytes()
        assert int.from_bytes(config[0x48:0x4A], "little") == 0x5810  # MRRS 4096, rest kept
    assert vm.read("/proc/sys/net/ipv4/tcp_rmem") == "4096 87380 4194304\n"
    assert vm.read(guest.TOPOLOGY_PATH) == topology
    exported = subprocess.run(
        ["sh", "-c", f". {vm.root}{guest.PROFILE_PATH} && env"], capture_output=True,
        text=True, env={}, check=True).stdout.splitlines()
    assert dict(line.split("=", 1) for line in exported if line.startswith("NCCL_")) == \
        guest.nccl_environment(spec, layout, ids)
    assert not any(call.startswith(("nvidia-smi", "systemctl")) for call in calls)

    written = {path: (vm.root / path.lstrip("/")).stat().st_mtime_ns
               for path in (guest.TOPOLOGY_PATH, guest.PROFILE_PATH)}
    out, calls = vm.run("early")
    assert out == "vela-guest-tuning: done (early)\n"
    assert all(call.startswith("ethtool -g ") for call in calls), calls  # reads only
    assert written == {path: (vm.root / path.lstrip("/")).stat().st_mtime_ns
                       for path in written}


def test_a_new_numbering_moves_names_in_a_running_guest(tmp_path, hgx):
    """The first VF unplugged and a new seed run in the same boot: every other VF's name moves
    down one, each into a name another VF still held (through a temporary name)."""
    spec, layout, ids = hgx
    vm = _guest(tmp_path, spec, layout, ids, "<system/>")
    vm.run("early")
    before = vm.names()
    gone = min(before)
    shutil.rmtree(vm.root / "sys/bus/pci/devices" / gone)
    (vm.root / "sys/class/net" / before[gone][0]).unlink()
    fewer = layout.model_copy(update={"devices": [
        d for d in layout.devices if d.guest_address != gone]})
    vm.script.write_text(guest.tuning_script(spec, fewer, ids, "<system/>"))
    out, calls = vm.run("early")
    assert "cannot" not in out, out
    assert vm.names() == {address: (f"vela{index}",) * 2
                          for index, address in enumerate(sorted(before)[1:])}
    assert "ip link set dev vela1 name velatmp0" in calls


def test_the_gpu_part_sets_clocks_and_starts_fabric_manager_only_with_nvlink(tmp_path, hgx):
    spec, layout, ids = hgx
    assert layout.nvlink
    vm = _guest(tmp_path, spec, layout, ids, "<system/>")
    (vm.root / "fabricmanager").touch()  # the stand-in systemctl knows the unit
    out, calls = vm.run("gpu")
    for gpu in ("0", "1"):
        assert f"nvidia-smi -i {gpu} -ac 1593,1410" in calls
        assert f"nvidia-smi -i {gpu} -lgc 1410,1410" in calls
        assert f"nvidia-smi -i {gpu} -lmc 1593,1593" in calls
        assert f"GPU {gpu}: memory clock locked at 1593 MHz not supported: Setting" in out
    assert "nvidia-smi -pm 1" in calls
    assert calls[-1] == "systemctl start --no-block nvidia-fabricmanager.service"
    assert not any(call.startswith(("ip ", "rdma ")) for call in calls)
    assert not (vm.root / guest.TOPOLOGY_PATH.lstrip("/")).exists()

    (vm.root / "fabricmanager").unlink()
    out, calls = vm.run("gpu")
    assert "no nvidia-fabricmanager unit" in out and not any("start" in c for c in calls)
    vm.script.write_text(guest.tuning_script(
        spec, layout.model_copy(update={"nvlink": None}), ids, "<system/>"))
    _, calls = vm.run("gpu")
    assert not any(call.startswith("systemctl") for call in calls)


def test_a_guest_without_the_tools_only_logs(tmp_path, hgx):
    """No rdma, ethtool, nvidia-smi or systemctl: each is logged and skipped, the rest done."""
    spec, layout, ids = hgx
    vm = _guest(tmp_path, spec, layout, ids, "<system/>")
    for tool in ("rdma", "ethtool", "nvidia-smi", "systemctl"):
        (vm.tools / tool).unlink()
    out, _ = vm.run()
    assert "no rdma tool to rename it vela0" in out and "no ethtool, ring sizes left" in out
    assert "no nvidia-smi" in out and "no nvidia-fabricmanager unit" in out
    assert out.endswith("vela-guest-tuning: done (all)\n")
    assert {names[0] for names in vm.names().values()} == set(guest.vf_names(layout).values())
