"""The emulated hypervisor host: its QEMU command line, as a pure function of a `HostSpec`.

The machine mirrors what matters on an HGX node, scaled down:
- q35 with an emulated Intel IOMMU (interrupt remapping, caching mode, device IOTLB) and one
  NUMA node per socket, each with its own CPUs and memory;
- per NUMA node, a PCIe expander bus (pxb-pcie, on that node) with a root port, and below it a
  PCIe switch (x3130 upstream, xio3130 downstream ports) holding a "GPU" and an SR-IOV NIC:
  the GPU stand-in is an ivshmem-plain device, whose BAR 2 is a large 64-bit prefetchable
  region backed by memory (as a GPU's frame buffer BAR is); the NIC is QEMU's igb (82576, up
  to 7 VFs); and a second igb on its own root port, whose VFs each get an IOMMU group (the
  switch ports have no ACS, so VFs under the switch share their PF's group);
- UEFI firmware (OVMF, with writable NVRAM) booting GRUB from the disk, so kernel command line
  changes go through the host's own update-grub, as on a real server;
- a virtio management NIC on QEMU's user network with SSH forwarded to a loopback port;
- the fabric: the isolated igbs (the ones the dev stack takes VFs from) of every lab host on one
  Ethernet segment, as a rack's NICs are on one switch. Each host's QEMU hub (`hubport`)
  joins its two igbs, a stream socket on loopback that the next host connects to, and one to
  the host before it: a chain of hubs, which forward every frame to all their other ports (QEMU
  net/hub.c), so any VF or PF reaches any other (the acceptance benchmark's iperf3 runs over
  it). A host started before the one it connects to, or whose uplink host restarted, is cut
  off from the hosts before it (the stream client connects once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GPU_STAND_IN = (0x1AF4, 0x1110)  # ivshmem: what the dev stack selects as its GPUs
SRIOV_NIC = (0x8086, 0x10C9)  # igb (82576)
# fw_cfg entries read by the image's vela-lab-seed unit at every boot.
SEED_ENTRIES = ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "authorized_keys",
                "hostname"]


@dataclass(frozen=True)
class HostSpec:
    """One lab host. `directory` holds its disk, NVRAM, seed files, console log and sockets."""

    index: int
    directory: Path
    ssh_port: int
    accel: str = "tcg"  # "kvm" where KVM really works
    numa_nodes: int = 2
    cpus_per_node: int = 1
    # 4 GiB: the low 2 GiB of node 0 have firmware holes, so only memory above 4 GiB offers a
    # whole free 1 GiB block for a huge page.
    memory_mib_per_node: int = 4096
    gpu_bar_mib: int = 1024
    fabric_port: int = 0  # loopback port the next host's fabric link connects to (0: none)
    fabric_uplink: int = 0  # the previous host's fabric_port (0: the first host)

    @property
    def name(self) -> str:
        return f"lab-{self.index}"

    def path(self, name: str) -> Path:
        return self.directory / name


def qemu_argv(spec: HostSpec, qemu: str = "qemu-system-x86_64") -> list[str]:
    """The full QEMU command line for one host (daemonized, monitor on a unix socket)."""
    argv = [qemu, "-name", f"vela-{spec.name}", "-nodefaults", "-no-user-config",
            "-machine", f"q35,accel={spec.accel},kernel-irqchip=split",
            # An Intel IOMMU belongs with an Intel CPU (TCG's "max" model says AMD otherwise).
            "-cpu", "host" if spec.accel == "kvm" else "max,vendor=GenuineIntel",
            "-smp", f"{spec.numa_nodes * spec.cpus_per_node},sockets={spec.numa_nodes},"
                    f"cores={spec.cpus_per_node},threads=1",
            "-m", f"{spec.numa_nodes * spec.memory_mib_per_node}M"]
    argv += _numa(spec)
    argv += ["-device", "intel-iommu,intremap=on,caching-mode=on,device-iotlb=on",
             "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
             "-drive", f"if=pflash,format=raw,unit=1,file={spec.path('OVMF_VARS.fd')}"]
    argv += _boot_disk_and_management(spec)
    for node in range(spec.numa_nodes):
        argv += _gpu_switch(spec, node)
    argv += _fabric(spec)
    for entry in SEED_ENTRIES:
        argv += ["-fw_cfg", f"name=opt/vela/{entry},file={spec.path('seed') / entry}"]
    argv += ["-display", "none", "-serial", f"file:{spec.path('console.log')}",
             "-qmp", f"unix:{spec.path('qmp.sock')},server=on,wait=off",
             "-pidfile", str(spec.path("qemu.pid")), "-daemonize"]
    return argv


def _numa(spec: HostSpec) -> list[str]:
    argv = []
    for node in range(spec.numa_nodes):
        first = node * spec.cpus_per_node
        cpus = f"{first}-{first + spec.cpus_per_node - 1}" if spec.cpus_per_node > 1 \
            else f"{first}"
        argv += ["-object", f"memory-backend-ram,id=mem{node},size={spec.memory_mib_per_node}M",
                 "-numa", f"node,nodeid={node},cpus={cpus},memdev=mem{node}"]
    return argv


def _boot_disk_and_management(spec: HostSpec) -> list[str]:
    return [
        "-device", "pcie-root-port,id=rp-disk,bus=pcie.0,chassis=1,slot=1",
        "-drive", f"if=none,id=disk0,format=qcow2,file={spec.path('disk.qcow2')},"
                  "cache=unsafe,discard=unmap",
        "-device", "virtio-blk-pci,drive=disk0,bus=rp-disk",
        "-device", "pcie-root-port,id=rp-mgmt,bus=pcie.0,chassis=2,slot=2",
        "-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=mgmt,bus=rp-mgmt",
    ]


def _gpu_switch(spec: HostSpec, node: int) -> list[str]:
    """pxb-pcie on `node` -> root port -> switch -> (GPU stand-in, igb NIC)."""
    # bus_nr is the number of the expander's own root bus: QEMU's pxb_bus_num() returns it
    # (hw/pci-bridge/pci_expander_bridge.c) and the guest finds that bus at 0000:<bus_nr in
    # hex>. The firmware numbers the buses behind its bridges upward from there, depth first
    # (EDK2 PciBusDxe), while pcie.0's hierarchy takes the numbers below it; 0x40 apart leaves
    # each expander 64 bus numbers. Node 0: root port 40:00.0, switch upstream port 41:00.0,
    # downstream ports 42:00.0 and 42:01.0, GPU 43:00.0, NIC 44:00.0, second root port 40:01.0
    # and its isolated NIC 45:00.0; node 1 the same from 0x80.
    bus_nr = 0x40 * (node + 1)
    # Each port's (chassis, slot) must be unique: QEMU refuses a second one (-EBUSY from
    # pcie_chassis_add_slot() in hw/pci/pcie_port.c). 4 ports per node, one chassis each.
    chassis = 10 + 4 * node
    return [
        "-device", f"pxb-pcie,id=pxb{node},bus_nr={bus_nr},numa_node={node},bus=pcie.0",
        "-device", f"pcie-root-port,id=rp{node},bus=pxb{node},chassis={chassis},slot=0",
        "-device", f"x3130-upstream,id=sw{node},bus=rp{node}",
        "-device", f"xio3130-downstream,id=sw{node}-gpu,bus=sw{node},chassis={chassis + 1},"
                   "slot=0",
        "-device", f"xio3130-downstream,id=sw{node}-nic,bus=sw{node},chassis={chassis + 2},"
                   "slot=0",
        "-object", f"memory-backend-memfd,id=gpumem{node},size={spec.gpu_bar_mib}M,share=on",
        "-device", f"ivshmem-plain,id=gpu{node},memdev=gpumem{node},bus=sw{node}-gpu",
        "-netdev", f"user,id=sriov{node},restrict=on",
        "-device", f"igb,id=nic{node},netdev=sriov{node},bus=sw{node}-nic,"
                   f"mac={_mac(spec, 2 * node)}",
        # A second igb on its own root port: root ports have ACS, so its VFs get IOMMU groups
        # of their own and can be passed through to nested guests (the switch ports cannot
        # isolate: QEMU gives them no ACS capability).
        "-device", f"pcie-root-port,id=rp{node}-nic,bus=pxb{node},chassis={chassis + 3},slot=0",
        *_fabric_port(spec, f"sriov{node}-iso"),
        "-device", f"igb,id=nic{node}-iso,netdev=sriov{node}-iso,bus=rp{node}-nic,"
                   f"mac={_mac(spec, 2 * node + 1)}",
    ]


def _mac(spec: HostSpec, nic: int) -> str:
    """A MAC of its own for each NIC of each host: QEMU gives every host's n-th NIC the same
    default one (52:54:00:12:34:56 + n, net/net.c qemu_macaddr_default_if_unset), which on
    the shared fabric makes two hosts' PFs one address (frames to either reach both)."""
    return f"52:54:00:76:{spec.index & 0xFF:02x}:{nic:02x}"


FABRIC_HUB = "0"


def _fabric_port(spec: HostSpec, netdev: str) -> list[str]:
    """A NIC's backend: a port of the fabric hub, or with no fabric a closed user network."""
    if not spec.fabric_port:
        return ["-netdev", f"user,id={netdev},restrict=on"]
    return ["-netdev", f"hubport,id={netdev},hubid={FABRIC_HUB}"]


def _fabric(spec: HostSpec) -> list[str]:
    """The links of this host's fabric hub: a server the next host connects to, and a client
    of the previous host's server (QEMU's stream netdev, docs/system/invocation: `-netdev
    stream`; the server takes a new client when the old one goes)."""
    if not spec.fabric_port:
        return []
    links = [("fabric-down", "on", spec.fabric_port)]
    if spec.fabric_uplink:
        links.append(("fabric-up", "off", spec.fabric_uplink))
    argv = []
    for name, server, port in links:
        argv += ["-netdev", f"stream,id={name},server={server},addr.type=inet,"
                            f"addr.host=127.0.0.1,addr.port={port}",
                 "-netdev", f"hubport,id={name}-port,hubid={FABRIC_HUB},netdev={name}"]
    return argv
