"""A fake 8-GPU HGX A100 node, the hardware vela is built for.

Modelled on a dual-socket Intel Ice Lake HGX A100 8-GPU server (the layout of the public HGX
A100 reference design, and of the recorded `nvidia-smi topo -m` in shared/recorded/topology:
GPUs in pairs behind PCIe switches, each pair sharing its switch with a ConnectX NIC):

- 2 NUMA nodes, 2 x 40 cores with SMT (CPUs 0-39,80-119 and 40-79,120-159), 1 TiB each;
- 4 Broadcom PEX88096 PCIe switches (1000:c010), two per socket, each on its own root complex,
  each with 4 downstream ports: 2 A100 SXM4 80GB GPUs (10de:20b2), 1 dual-port ConnectX-6
  (15b3:101b, SR-IOV TotalVFs 8, VF 15b3:101c), 1 empty;
- 6 NVSwitch bridges (10de:1af1) behind a fifth switch on socket 1;
- on the chipset root complex: the BMC's ASPEED VGA and a dual-port Intel I350 management NIC
  (whose functions share an IOMMU group: it has no ACS).

`hgx_a100()` returns the `FakeHost` and an `HgxLayout` saying where everything is, so tests
can compare gathered facts with what was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .fakehost import ACS_LINUX_DEFAULT, FakeHost, Function

A100_SXM4_80GB = 0x20B2
NVSWITCH = 0x1AF1
CONNECTX6 = 0x101B
CONNECTX6_VF = 0x101C
NVIDIA, MELLANOX = 0x10DE, 0x15B3
CLASS_3D = 0x030200
CLASS_ETHERNET = 0x020000
CLASS_OTHER_BRIDGE = 0x068000
# ConnectX ports expose an ACS capability that supports nothing (as on the recorded ConnectX-7).
NIC_ACS = (0x0000, 0x0000)
# A100 SXM4 80GB: 16 MiB registers, 128 GiB frame buffer (BAR1), 32 MiB (BAR3).
A100_BARS = [16 << 20, 128 << 30, 0, 32 << 20, 0, 0]


@dataclass
class SwitchLayout:
    upstream: str
    numa_node: int
    gpus: list[str]
    nic_pfs: list[str]
    nic_interfaces: list[str]


@dataclass
class HgxLayout:
    switches: list[SwitchLayout] = field(default_factory=list)
    nvswitches: list[str] = field(default_factory=list)
    bmc_vga: str = ""
    mgmt_nic: list[str] = field(default_factory=list)

    @property
    def gpus(self) -> list[str]:
        return [gpu for switch in self.switches for gpu in switch.gpus]

    @property
    def nic_pfs(self) -> list[str]:
        return [pf for switch in self.switches for pf in switch.nic_pfs]


def hgx_a100(*, hostname: str = "hgx-a100-01", cmdline: str | None = None,
             hugepages_1g_per_node: int = 0, nic_vfs: int = 0, nic_ats: bool = False,
             iommu_active: bool = True, switch_acs: int = 0x005F, second_nic: bool = False,
             grub_defaults: str | None = None) -> tuple[FakeHost, HgxLayout]:
    """`switch_acs`: the ACS Capability of the switches' downstream ports (the default has
    every control but Egress; 0x001F, without Direct Translated P2P, as some switches have).
    `second_nic`: one more single-port ConnectX-6 on each switch's fourth downstream port, as
    DGX A100-like nodes have two NICs under a switch."""
    options = {} if cmdline is None else {"cmdline": cmdline}
    host = FakeHost(hostname=hostname, cpu_vendor="GenuineIntel", iommu_table="DMAR",
                    iommu_active=iommu_active, grub_defaults=grub_defaults, **options)
    host.modules = {"nvidia", "mlx5_core"}
    host.numa_node(0, "0-39,80-119", 1024, {1048576: hugepages_1g_per_node})
    host.numa_node(1, "40-79,120-159", 1024, {1048576: hugepages_1g_per_node})
    layout = HgxLayout()
    _chipset(host, layout)
    for index, (bus, node) in enumerate([(0x16, 0), (0x30, 0), (0x97, 1), (0xB0, 1)]):
        layout.switches.append(_gpu_switch(host, index, bus, node, nic_vfs, nic_ats,
                                           switch_acs, second_nic))
    _nvswitches(host, layout)
    return host, layout


def _chipset(host: FakeHost, layout: HgxLayout) -> None:
    chipset = host.root_complex(0x00, numa_node=0)
    bmc_port = host.root_port(chipset, 0x1C, 0)
    vga = host.endpoint(bmc_port, vendor_id=0x1A03, device_id=0x2000, class_code=0x030000,
                        driver="ast")
    mgmt_port = host.root_port(chipset, 0x1C, 4)
    mgmt = host.endpoint(mgmt_port, vendor_id=0x8086, device_id=0x1521,
                         class_code=CLASS_ETHERNET, functions=2, driver="igb",
                         net=["eno1", "eno2"], sriov_total_vfs=7, sriov_vf_device=0x1520)
    layout.bmc_vga = vga[0].address
    layout.mgmt_nic = [function.address for function in mgmt]


def _gpu_switch(host: FakeHost, index: int, bus: int, node: int, nic_vfs: int,
                nic_ats: bool, switch_acs: int, second_nic: bool) -> SwitchLayout:
    complex_ = host.root_complex(bus, numa_node=node)
    switch = host.switch(host.root_port(complex_, 0x01, 0), downstream_ports=4,
                         acs=(switch_acs, ACS_LINUX_DEFAULT & switch_acs))
    gpus = [host.endpoint(port, vendor_id=NVIDIA, device_id=A100_SXM4_80GB,
                          class_code=CLASS_3D, driver="nvidia", ats_control=0x0000,
                          bars=A100_BARS)[0]
            for port in switch.downstream[:2]]
    pfs, interfaces = dual_port_connectx(host, switch.downstream[2], device_id=CONNECTX6,
                                         vf_device=CONNECTX6_VF, total_vfs=8,
                                         ats_control=0x0000 if nic_ats else None)
    if second_nic:
        port = switch.downstream[3]
        interfaces.append(f"enp{port.secondary_bus}s0np0")
        pfs += host.endpoint(port, vendor_id=MELLANOX, device_id=CONNECTX6,
                             class_code=CLASS_ETHERNET, driver="mlx5_core",
                             net=interfaces[-1:], acs=NIC_ACS, sriov_total_vfs=8,
                             sriov_vf_device=CONNECTX6_VF,
                             ats_control=0x0000 if nic_ats else None, bars=[32 << 20])
    if nic_vfs:
        for pf, interface in zip(pfs, interfaces, strict=True):
            host.add_vfs(pf, nic_vfs, driver="mlx5_core", net_prefix=interface.rsplit("np", 1)[0])
    return SwitchLayout(upstream=switch.upstream.address, numa_node=node,
                        gpus=[gpu.address for gpu in gpus],
                        nic_pfs=[pf.address for pf in pfs], nic_interfaces=interfaces)


def _nvswitches(host: FakeHost, layout: HgxLayout) -> None:
    complex_ = host.root_complex(0xCA, numa_node=1)
    switch = host.switch(host.root_port(complex_, 0x01, 0), downstream_ports=6)
    bridges: list[Function] = [
        host.endpoint(port, vendor_id=NVIDIA, device_id=NVSWITCH, class_code=CLASS_OTHER_BRIDGE,
                      driver="nvidia")[0]
        for port in switch.downstream]
    layout.nvswitches = [bridge.address for bridge in bridges]


def dual_port_connectx(host: FakeHost, port: Function, *, device_id: int, vf_device: int,
                       total_vfs: int, ats_control: int | None = None,
                       nic_vfs: int = 0) -> tuple[list[Function], list[str]]:
    """A dual-port ConnectX below `port` (two PFs, mlx5_core, an ACS capability that supports
    nothing, a 32 MiB BAR), each port with `nic_vfs` VFs; returns the PFs and their interfaces."""
    prefix = f"enp{port.secondary_bus}s0"
    interfaces = [f"{prefix}f0np0", f"{prefix}f1np1"]
    pfs = host.endpoint(port, vendor_id=MELLANOX, device_id=device_id,
                        class_code=CLASS_ETHERNET, functions=2, driver="mlx5_core",
                        net=interfaces, acs=NIC_ACS, sriov_total_vfs=total_vfs,
                        sriov_vf_device=vf_device, ats_control=ats_control, bars=[32 << 20])
    for pf, interface in zip(pfs, interfaces, strict=True):
        if nic_vfs:
            host.add_vfs(pf, nic_vfs, driver="mlx5_core", net_prefix=interface.rsplit("np", 1)[0])
    return pfs, interfaces
