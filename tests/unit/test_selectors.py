"""Device selector presets against real devices: recorded config space and `lspci -vvv` text.

Class codes are the PCI Code and ID Assignment spec's, as include/linux/pci_ids.h names them
(PCI_CLASS_DISPLAY_VGA 0x0300, PCI_CLASS_DISPLAY_3D 0x0302, PCI_CLASS_MULTIMEDIA_AUDIO_DEV
0x0403, PCI_CLASS_BRIDGE_OTHER 0x0680) and pci.ids prints them ("C 03 Display controller":
"00 VGA compatible controller", "02 3D controller"; "C 04 Multimedia controller": "03 Audio
device").
"""

from __future__ import annotations

import re

import pytest

from providers.common.selectors import PRESETS, matches
from providers.facts.models import PciDevice
from tests.support.lspci_text import parse_lspci_hex_dump, parse_lspci_verbose
from tests.support.recorded import RECORDED, recorded, recorded_files

# lspci's names (from pci.ids) for the ids the recorded RTX 6000 Ada text prints without -nn.
PCI_IDS_CLASSES = {"VGA compatible controller": 0x0300, "3D controller": 0x0302}
PCI_IDS_VENDORS = {"NVIDIA Corporation": 0x10DE}
PCI_IDS_NVIDIA_DEVICES = {"AD102GL [RTX 6000 Ada Generation]": 0x26B1}
_HEADER = re.compile(r"^(?P<slot>\S+) (?P<cls>[^:]+): (?P<vendor>NVIDIA Corporation) "
                     r"(?P<device>.+?) \(rev [0-9a-f]+\)"
                     r"(?: \(prog-if (?P<progif>[0-9a-f]{2}) .*)?$", re.MULTILINE)


def _device(address: str, vendor_id: int, device_id: int, class_code: int) -> PciDevice:
    return PciDevice(address=address, vendor_id=vendor_id, device_id=device_id,
                     class_code=class_code)


def test_nvidia_gpu_picks_the_recorded_vga_class_rtx_6000_ada():
    """lspci -vvv of an ASUS ESC8000A-E12's RTX 6000 Ada: a "VGA compatible controller", like
    the L40S and other display-capable data-center cards, not a 3D controller."""
    text = recorded("lspci_vvv/gpu-rtx6000ada-asus-esc8000a-e12.txt")
    (slot, lspci), = parse_lspci_verbose(text).items()
    header = _HEADER.search(text)
    assert header and header["slot"] == slot and lspci.driver == "nvidia"
    class_code = PCI_IDS_CLASSES[header["cls"]] << 8 | int(header["progif"], 16)
    gpu = _device(f"0000:{slot}", PCI_IDS_VENDORS[header["vendor"]],
                  PCI_IDS_NVIDIA_DEVICES[header["device"]], class_code)
    assert gpu.class_code == 0x030000
    assert matches("nvidia-gpu", gpu)
    assert not matches("nvidia-nvswitch", gpu) and not matches("connectx", gpu)


def _recorded_config_devices() -> list[tuple[str, PciDevice]]:
    """Each recorded config-space dump as a device: ids and class from its bytes (offsets 0,
    2 and 9-11), checked against what `lspci -nn` printed for the same bytes."""
    devices = []
    for path in recorded_files("pci_config"):
        (slot, raw), = parse_lspci_hex_dump(recorded(f"pci_config/{path.name}")).items()
        vendor, device = int.from_bytes(raw[0:2], "little"), int.from_bytes(raw[2:4], "little")
        class_code = int.from_bytes(raw[9:12], "little")
        decoded = (RECORDED / "pci_config" / path.name.replace(".txt", ".lspci-vvv.txt"))
        header = next(line for line in decoded.read_text().splitlines()
                      if line.startswith(slot + " "))
        assert f"[{class_code >> 8:04x}]:" in header and f"[{vendor:04x}:{device:04x}]" in header
        address = slot if slot.count(":") == 2 else f"0000:{slot}"
        devices.append((path.stem, _device(address, vendor, device, class_code)))
    return devices


def test_presets_pick_from_the_recorded_devices_only_their_own():
    """Among every recorded device (NICs, bridges, root ports, an Intel accelerator, a
    GeForce MX150 3D controller), each preset picks what it names and nothing else."""
    devices = _recorded_config_devices()
    picked = {preset: [name for name, device in devices if matches(preset, device)]
              for preset in PRESETS}
    assert picked == {"nvidia-gpu": ["nvidia-gp108m-mx150-endpoint"],
                      "nvidia-nvswitch": [],
                      "connectx": ["mellanox-connectx3-pro-endpoint"]}


CLASSES = [
    ("A100 SXM4: 3D controller", (0x10DE, 0x20B2), 0x030200, "nvidia-gpu"),
    ("RTX 6000 Ada: VGA compatible controller", (0x10DE, 0x26B1), 0x030000, "nvidia-gpu"),
    ("NVSwitch: bridge, other", (0x10DE, 0x1AF1), 0x068000, "nvidia-nvswitch"),
    # The GPU's HDMI/DP audio function goes to vfio-pci only as an IOMMU group companion.
    ("AD102 HD Audio: audio device", (0x10DE, 0x22BA), 0x040300, None),
    # A BMC's VGA (pci.ids 1a03:2000 "ASPEED Graphics Family") is the host's console.
    ("ASPEED BMC: VGA compatible controller", (0x1A03, 0x2000), 0x030000, None),
    ("ConnectX-7: InfiniBand", (0x15B3, 0x1021), 0x020700, "connectx"),
]


@pytest.mark.parametrize(("what", "vendor_device", "class_code", "preset"), CLASSES,
                         ids=[case[0] for case in CLASSES])
def test_each_preset_picks_its_class_only(what, vendor_device, class_code, preset):
    device = _device("0000:01:00.0", *vendor_device, class_code)
    assert [name for name in PRESETS if matches(name, device)] == ([preset] if preset else [])
