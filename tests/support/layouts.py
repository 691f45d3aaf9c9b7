"""More fake GPU hosts, each after a published or recorded layout (see `hgx.py` for the first).

- `ibm_hgx_a100()`: the HGX A100 node of IBM's Vela sample, where only 2 of the 4 GPU switches
  hold a NIC.
- `dgx_a100()`: a DGX A100-like node: AMD EPYC, two single-port ConnectX-6 under each of the
  4 GPU switches.
- `amd_epyc_host()`: the ASUS ESC8000A-E12 of the recorded `lspci -tv`: AMD EPYC Genoa, GPUs
  and ConnectX-7 straight on root ports, no PCIe switch.

Each builder returns the `FakeHost` (write it with `.write(root)`) and a layout saying where
things are, so tests can compare what `providers.facts` gathers with what was built. Where a
value is not in the source, the comment says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .fakehost import ACS_LINUX_DEFAULT, FakeHost, Function
from .fakekernel import BOOT_PREFIX
from .hgx import (
    A100_BARS,
    A100_SXM4_80GB,
    CLASS_3D,
    CLASS_OTHER_BRIDGE,
    CONNECTX6,
    CONNECTX6_VF,
    MELLANOX,
    NIC_ACS,
    NVIDIA,
    NVSWITCH,
    HgxLayout,
    SwitchLayout,
    dual_port_connectx,
)
from .recorded import recorded

# pci.ids (github.com/pciutils/pciids, pci.ids @c1c12547): 15b3:101d "MT2892 Family
# [ConnectX-6 Dx]", 15b3:101e "ConnectX Family mlx5Gen Virtual Function", 15b3:1021 "MT2910
# Family [ConnectX-7]", 10de:26b1 "AD102GL [RTX 6000 Ada Generation]", 10de:22ba "AD102 High
# Definition Audio Controller".
CONNECTX6_DX = 0x101D
CONNECTX_VF = 0x101E
CONNECTX7 = 0x1021
RTX6000_ADA = 0x26B1
AD102_AUDIO = 0x22BA
CLASS_VGA = 0x030000
CLASS_AUDIO = 0x040300  # multimedia, HD Audio: what lspci calls "Audio device"
CLASS_INFINIBAND = 0x020700
AMD = 0x1022
ROME_GPP_BRIDGE, GENOA_GPP_BRIDGE = 0x1483, 0x14A5  # pci.ids: "... GPP Bridge"
# udev's name for an InfiniBand port: "ib", then the path (systemd.net-naming-scheme(7)).
IB_PREFIX = "ibp"


# -- (a) IBM Vela's HGX A100 sample ----------------------------------------------------------

@dataclass
class LabelledHgxLayout(HgxLayout):
    """An `HgxLayout` whose switches also go by the label their source gives them."""

    labels: dict[str, SwitchLayout] = field(default_factory=dict)


# The sample: github.com/apoorvemohan/HCIR, vela_asplos2025/vmsetup/sample-nccl-topology.xml
# @e7243874 (IBM Research's ASPLOS'25 Vela artifact), an NCCL topology file for an 8x A100 VM:
#   NUMA 0: bridge -> GPUs c9:00.0, c9:01.0 (no NIC)
#           bridge -> GPUs dd:00.0, dd:01.0, NIC dd:02.0 (15b3:101d, mlx5_1)
#   NUMA 1: bridge -> GPUs b5:00.0, b5:01.0, NIC b5:02.0 (15b3:101d, mlx5_0)
#           bridge -> GPUs A1:00.0, A1:01.0 (no NIC)
# GPUs are 10de:20b2 (A100 SXM4 80GB), CPUs GenuineIntel family 6 model 85.
#
# Those are the addresses the VM sees, not the host's: each "bridge" is 104c:8232 (QEMU's
# xio3130 switch upstream port, hw/pci-bridge/xio3130_upstream.c) with a placeholder bus id
# ffff:ff:00.0 .. ffff:fc:00.0, as hand-written NCCL topology files for VMs have (DigitalOcean's
# docs.digitalocean.com/products/droplets/how-to/gpu/configure-multi-node/topo.xml puts a GPU at
# 01:01.0 and a NIC at 01:02.0 the same way). On a real PCIe host no device 1 or 2 can sit on the
# bus below a root or switch downstream port: the link below such a port has only device 0, and
# Linux scans only that (drivers/pci/probe.c, only_one_child(); PCIe spec r3.1 sec 7.3.1). Such
# addresses exist only on a root bus (a host bridge's, as QEMU's pxb expander buses are) or a
# conventional PCI bus, and FakeHost attaches endpoints only below a root or downstream port.
#
# So the host here has what the sample describes, one downstream port per device: device N of
# the sample's bus B is the downstream port N of that group's switch, and the device behind it
# is (B+N):00.0. The first GPU of each group keeps the sample's address (c9:00.0, dd:00.0, b5:00.0,
# a1:00.0); c9:01.0 becomes ca:00.0, dd:02.0 becomes df:00.0, and so on.
IBM_GROUPS = [  # (label, NUMA node, has a NIC), in the sample's order
    ("c9", 0, False),
    ("dd", 0, True),
    ("b5", 1, True),
    ("a1", 1, False),
]


def ibm_hgx_a100(*, hostname: str = "vela-a100-01", nic_vfs: int = 0,
                 switch_acs: int = 0x005F, grub_defaults: str | None = None,
                 iommu_active: bool = True) -> tuple[FakeHost, LabelledHgxLayout]:
    """The sample's host: Intel (DMAR), 2 NUMA nodes, 4 PCIe switches of 2 A100s each, a
    ConnectX-6 Dx under the dd and b5 switches only. `nic_vfs` VFs are enabled on each NIC
    function; `switch_acs` is the ACS Capability of the switches' downstream ports."""
    host = FakeHost(hostname=hostname, cpu_vendor="GenuineIntel", iommu_table="DMAR",
                    iommu_active=iommu_active, grub_defaults=grub_defaults)
    host.modules = {"nvidia", "mlx5_core"}
    # CPUs as the sample's NUMA affinity masks (00ffffff: 0-23; ffff,ff000000: 24-47) and the
    # sample VM's pinning (sample-optimized-a100-vm-q35.xml: vCPUs 0-23 on host node 0, 24-47
    # on node 1, 375 GiB of 1 GiB pages from each). The host's memory is not in the sample:
    # 768 GiB a node holds that VM.
    host.numa_node(0, "0-23", 768)
    host.numa_node(1, "24-47", 768)
    layout = LabelledHgxLayout()
    for label, node, has_nic in IBM_GROUPS:
        first_bus = int(label, 16)
        # FakeHost numbers buses in order: root complex R, upstream port on R+1, downstream
        # ports on R+2, the devices behind them on R+3.. So R = B - 3 puts the first at B.
        complex_ = host.root_complex(first_bus - 3, numa_node=node)
        switch = host.switch(host.root_port(complex_, 0x01, 0),
                             downstream_ports=3 if has_nic else 2,
                             acs=(switch_acs, ACS_LINUX_DEFAULT & switch_acs))
        gpus = [host.endpoint(port, vendor_id=NVIDIA, device_id=A100_SXM4_80GB,
                              class_code=CLASS_3D, driver="nvidia", ats_control=0x0000,
                              bars=A100_BARS)[0]
                for port in switch.downstream[:2]]
        pfs: list[Function] = []
        interfaces: list[str] = []
        if has_nic:
            port = switch.downstream[2]
            # Two functions (ports) with 8 VFs each: the sample's q35 domain XML passes the
            # host VFs 3f:00.2 and 3f:01.2 (and 93:00.2, 93:01.2), the first VF of each PF of
            # a dual-port ConnectX whose PF0 has 8 VFs (ConnectX VF offsets: PF0 2, PF1 1 + 8).
            pfs, interfaces = dual_port_connectx(host, port, device_id=CONNECTX6_DX,
                                                 vf_device=CONNECTX_VF, total_vfs=8,
                                                 nic_vfs=nic_vfs)
        group = SwitchLayout(upstream=switch.upstream.address, numa_node=node,
                             gpus=[gpu.address for gpu in gpus],
                             nic_pfs=[pf.address for pf in pfs], nic_interfaces=interfaces)
        layout.switches.append(group)
        layout.labels[label] = group
    return host, layout


# -- (b) DGX A100 -----------------------------------------------------------------------------

def dgx_a100(*, hostname: str = "dgx-a100-01", nic_vfs: int = 0, switch_acs: int = 0x005F,
             grub_defaults: str | None = None) -> tuple[FakeHost, HgxLayout]:
    """A DGX A100-like node.

    - CPUs: 2x AMD EPYC 7742 (64 cores each), 2 TB of memory: NVIDIA's DGX A100 system
      description in MLPerf Inference v1.0 (github.com/mlcommons/inference_results_v1.0,
      closed/NVIDIA/systems/DGX-A100_A100-SXM-80GBx8_TRT.json @cd4f7a9b). So the IOMMU is
      AMD's (IVRS). One NUMA node per socket and SMT siblings numbered +128 are not in that
      source (Linux's usual numbering for 2x 64 cores with SMT).
    - PCIe: GPUs in pairs, each pair behind its own switch with its own NICs and no NIC shared
      between pairs: the recorded `nvidia-smi topo -m` of an 8x A100 NV12 node
      (tests/data/recorded/topology/nvsmi-topo-8xA100-17nic-xuesongtap.txt: PXB between a GPU
      pair and its NICs, SYS to every other NIC). Two single-port ConnectX-6 (15b3:101b,
      InfiniBand class) per switch, each on a downstream port of its own: DGX A100's eight
      compute NICs as NVIDIA's DGX A100 user guide describes them (its text could not be
      checked here; the recording above shows four mlx5 devices per GPU pair, in two PIX
      pairs). 6 NVSwitches (10de:1af1): the host NVSwitch bridges b7:00.0-bc:00.0 that IBM's
      Vela sample VM takes (sample-optimized-a100-vm-q35.xml, see `ibm_hgx_a100`).
    - SR-IOV: 8 VFs per NIC, what NVIDIA's DGX BasePOD deployment guide configures on DGX
      compute NICs (docs.nvidia.com/dgx-basepod/deployment-guide-dgx-basepod/latest/sriov.html:
      NUM_OF_VFS 8).
    Bus numbers follow FakeHost's allocation (a DGX A100's real ones are not recorded here);
    the root ports are 1022:1483, pci.ids' "Starship/Matisse GPP Bridge" of EPYC Rome (which
    GPP bridge id a DGX A100's ports have is not recorded either).
    `switch_acs`: the ACS Capability of the switches' downstream ports."""
    host = FakeHost(hostname=hostname, cpu_vendor="AuthenticAMD", iommu_table="IVRS",
                    grub_defaults=grub_defaults)
    host.modules = {"nvidia", "mlx5_core"}
    host.numa_node(0, "0-63,128-191", 1024)
    host.numa_node(1, "64-127,192-255", 1024)
    layout = HgxLayout()
    for bus, node in [(0x00, 0), (0x40, 0), (0x80, 1), (0xC0, 1)]:
        complex_ = host.root_complex(bus, numa_node=node)
        switch = host.switch(host.root_port(complex_, 0x01, 1, vendor_id=AMD,
                                             device_id=ROME_GPP_BRIDGE),
                             downstream_ports=4, acs=(switch_acs, ACS_LINUX_DEFAULT & switch_acs))
        gpus = [host.endpoint(port, vendor_id=NVIDIA, device_id=A100_SXM4_80GB,
                              class_code=CLASS_3D, driver="nvidia", ats_control=0x0000,
                              bars=A100_BARS)[0]
                for port in switch.downstream[:2]]
        pfs, interfaces = [], []
        for port in switch.downstream[2:]:
            interfaces.append(f"{IB_PREFIX}{port.secondary_bus}s0")
            pfs += host.endpoint(port, vendor_id=MELLANOX, device_id=CONNECTX6,
                                 class_code=CLASS_INFINIBAND, driver="mlx5_core",
                                 net=interfaces[-1:], acs=NIC_ACS, sriov_total_vfs=8,
                                 sriov_vf_device=CONNECTX6_VF, bars=[32 << 20])
        if nic_vfs:
            for pf, interface in zip(pfs, interfaces, strict=True):
                host.add_vfs(pf, nic_vfs, driver="mlx5_core", net_prefix=interface)
        layout.switches.append(SwitchLayout(
            upstream=switch.upstream.address, numa_node=node,
            gpus=[gpu.address for gpu in gpus], nic_pfs=[pf.address for pf in pfs],
            nic_interfaces=interfaces))
    complex_ = host.root_complex(0xE0, numa_node=1)
    switch = host.switch(host.root_port(complex_, 0x01, 1, vendor_id=AMD,
                                             device_id=ROME_GPP_BRIDGE),
                         downstream_ports=6)
    layout.nvswitches = [
        host.endpoint(port, vendor_id=NVIDIA, device_id=NVSWITCH,
                      class_code=CLASS_OTHER_BRIDGE, driver="nvidia")[0].address
        for port in switch.downstream]
    return host, layout


# -- (c) AMD EPYC Genoa: ASUS ESC8000A-E12 ----------------------------------------------------

@dataclass
class EpycLayout:
    """Where the recorded host's GPUs and NICs are; `ports`: device -> its root port."""

    gpus: list[str] = field(default_factory=list)
    gpu_audio: list[str] = field(default_factory=list)
    nic_pfs: list[str] = field(default_factory=list)
    nic_interfaces: list[str] = field(default_factory=list)
    numa: dict[str, int] = field(default_factory=dict)
    ports: dict[str, str] = field(default_factory=dict)


# Source of everything below unless said otherwise: github.com/luigifcruz/stelline,
# docs/quickstart/validated-hardware/server/asus-esc8000a-e12.md @5abfb581 ("coyote2"):
# `lspci -tv` (recorded: tests/data/recorded/topology/lspci-tv-asus-esc8000a-e12-4gpu-2cx7.txt),
# `lspci -vvv` of a GPU and a ConnectX-7 (recorded: lspci_vvv/*asus-esc8000a-e12.txt),
# `numactl --hardware`, `lscpu` (AuthenticAMD, 2x EPYC 9374F, 32 cores each, no SMT),
# `cat /etc/default/grub` and gdscheck ("IOMMU: disabled", "Linux 6.8.0-64-generic").
#
# (root complex, root port, NUMA node, what is behind the port)
EPYC_SLOTS = [
    (0x00, (0x01, 1), 0, "gpu"),   # 01:00.0 RTX 6000 Ada + 01:00.1 audio, NUMA node 0
    (0x20, (0x03, 1), 0, "cx7"),   # 21:00.0/.1 ConnectX-7, NUMA node 0
    (0x40, (0x01, 1), 0, "gpu"),   # 41:00.0, NUMA node 0
    (0x80, (0x01, 1), 1, "cx7"),   # 81:00.0/.1 ConnectX-7, NUMA node 1
    (0xC0, (0x01, 1), 1, "gpu"),   # c1:00.0, NUMA node 1
    (0xE0, (0x01, 1), 1, "gpu"),   # e1:00.0, NUMA node 1
]
# The recorded GRUB_CMDLINE_LINUX_DEFAULT of that host (GRUB_CMDLINE_LINUX is empty).
ESC8000A_GRUB_DEFAULT = ("amd_iommu=off iommu=pt pci=realloc=off default_hugepagesz=1G "
                         "hugepagesz=1G hugepages=8 isolcpus=0-3,32-35 nohz_full=0-3,32-35 "
                         "rcu_nocbs=0-3,32-35 irqaffinity=4-31,36-63 rcu_nocb_poll "
                         "tsc=reliable audit=0 nosoftlockup")


def amd_epyc_host(*, amd_iommu_off: bool = True, hostname: str = "coyote2",
                  nic_vfs: int = 0) -> tuple[FakeHost, EpycLayout]:
    """The recorded ASUS ESC8000A-E12: 4 RTX 6000 Ada GPUs and 2 dual-port ConnectX-7, each
    straight on a root port of its own root complex (no PCIe switch: `nvidia-smi topo -m` there
    shows only NODE and SYS between GPUs and NICs).

    `amd_iommu_off=True` is the host as recorded: `amd_iommu=off` on the command line, so no
    IOMMU came up (gdscheck: "IOMMU: disabled") and Linux left every ACS control off (the
    recording's `lspci -vvv | grep ACSCtl`: all `-`). False: the same host booted without that
    token: the AMD IOMMU comes up (it is on by default), IOMMU groups exist and the root ports
    get the ACS controls Linux enables.

    Not in the recording, so FakeHost's or Linux's usual values: the root ports' device id and
    ACS Capability (only ACSCtl lines were recorded), the boot prefix of /proc/cmdline (the
    fake kernel's), the NICs' netdev names (systemd's path names for their buses). Left out:
    the NVMe drives and carrier switches, the X710, the BMC's VGA, AMD's dummy functions."""
    args = ESC8000A_GRUB_DEFAULT if amd_iommu_off else \
        ESC8000A_GRUB_DEFAULT.replace("amd_iommu=off ", "")
    debian = recorded("files/etc-default-grub-debian12.txt")
    grub = "".join(f'GRUB_CMDLINE_LINUX_DEFAULT="{args}"\n'
                   if line.startswith("GRUB_CMDLINE_LINUX_DEFAULT=") else line
                   for line in debian.splitlines(keepends=True))
    host = FakeHost(hostname=hostname, cpu_vendor="AuthenticAMD", iommu_table="IVRS",
                    iommu_active=not amd_iommu_off, kernel="6.8.0-64-generic",
                    cmdline=f"{BOOT_PREFIX} {args}", grub_defaults=grub,
                    default_hugepage_kib=1048576)
    host.modules = {"nvidia", "mlx5_core", "snd_hda_intel"}
    # numactl: node 0 CPUs 0-31, 193129 MB; node 1 CPUs 32-63, 193477 MB (FakeHost takes
    # whole GiB: 188). The command line's hugepages=8 of 1G, spread over the nodes at boot.
    host.numa_node(0, "0-31", 188, {1048576: 4})
    host.numa_node(1, "32-63", 188, {1048576: 4})
    port_acs = (0x001F, 0x0000 if amd_iommu_off else ACS_LINUX_DEFAULT & 0x001F)
    layout = EpycLayout()
    for bus, (device, function), node, what in EPYC_SLOTS:
        complex_ = host.root_complex(bus, numa_node=node)
        # pci.ids calls 1022:14a5 "Genoa/Bergamo GPP Bridge"; lspci -tv does not name the
        # bridges, so which GPP bridge id these ports have is not recorded.
        port = host.root_port(complex_, device, function, vendor_id=AMD, device_id=GENOA_GPP_BRIDGE,
                              acs=port_acs)
        if what == "gpu":
            # Class: "VGA compatible controller" (lspci -vvv). BARs as recorded: 16M, 64G, 32M.
            gpu, audio = host.endpoint(port, vendor_id=NVIDIA, device_id=RTX6000_ADA,
                                       class_code=CLASS_VGA, functions=2, driver="nvidia",
                                       bars=[16 << 20, 64 << 30, 0, 32 << 20])
            # Function 1 is the GPU's HD Audio controller (lspci -tv: 00.1 "AD102 High
            # Definition Audio Controller"). FakeHost.endpoint gives every function one
            # identity, so the second is renamed here before the tree is written.
            audio.device_id, audio.class_code, audio.driver = \
                AD102_AUDIO, CLASS_AUDIO, "snd_hda_intel"
            audio.bars = []  # not recorded
            layout.gpus.append(gpu.address)
            layout.gpu_audio.append(audio.address)
            layout.numa[gpu.address] = node
            layout.ports[gpu.address] = port.address
        else:
            # lspci -vvv of 21:00.0 and 81:00.0: Ethernet, MaxReadReq 512, SR-IOV Total VFs 16
            # (VF 101e, offset 2, stride 1), an ACS capability with nothing in it, no ATS,
            # BAR 0 32M, driver mlx5_core.
            pfs, interfaces = dual_port_connectx(host, port, device_id=CONNECTX7,
                                                 vf_device=CONNECTX_VF, total_vfs=16,
                                                 nic_vfs=nic_vfs)
            for pf in pfs:
                layout.numa[pf.address] = node
                layout.ports[pf.address] = port.address
            layout.nic_pfs += [pf.address for pf in pfs]
            layout.nic_interfaces += interfaces
    return host, layout
