"""Plays the parts of a running system that a fake host root cannot: the kernel, systemd and
the bootloader, so HostTuning's real scripts can run against an HGX fixture and converge.

HostTuning's shell library runs every command that acts on the live system through
`vela_system`, which under a sysroot prints `vela: sysroot ROOT: not running: COMMAND` instead.
`FakeKernel.after(result)` reads those lines and does what the command would have done
(enable/disable a unit, set firmware through the stand-in), then settles driver bindings as the
kernel does after a `drivers_probe`. `reboot()` is a power cycle: new boot id, the command line
from /etc/default/grub, config space back to power-on values, vfio-pci.ids and huge pages
applied from the command line, the firmware's next-boot values made current (by the stand-in),
then the boot unit run if enabled.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from pathlib import Path

from providers.facts.pciconfig import decode
from providers.host import LocalHost
from providers.host.base import CommandResult
from providers.host_tuning import grub
from providers.host_tuning.observe import (
    BOOT_SCRIPT,
    GRUB_DEFAULTS,
    UNIT_LINK,
    UNIT_NAME,
)
from tests.support.kernel_cmdline import cmdline_value

from .fakehost import FakeHost

STANDIN = Path(__file__).resolve().parent / "standins" / "mstconfig-standin"
VF_RSVDP_DEVCTL = 0x70E0  # Device Control: Max_Read_Request_Size 14:12, Max_Payload_Size 7:5
# What GRUB puts before the configured arguments (the fixture boots the same way).
BOOT_PREFIX = ("BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 "
               "root=UUID=3f1c2b9e-5a8d-4e61-9c0e-2b7f4a6d8e10 ro")


class FakeKernel:
    def __init__(self, host: FakeHost, root: Path) -> None:
        self.host = host
        self.root = Path(root)
        self.defaults = {address: function.driver
                         for address, function in host.functions.items()}
        # (node, page size in KiB) -> the most pages that node can hold; absent: no limit
        self.hugepage_room: dict[tuple[int, int], int] = {}
        self.boots = 0

    # -- after a script ran ----------------------------------------------------------------------

    def after(self, stderr: str) -> None:
        for line in stderr.splitlines():
            marker = f"vela: sysroot {self.root}: not running: "
            if line.startswith(marker):
                self._system(shlex.split(line[len(marker):]))
        self.settle()

    def _system(self, argv: list[str]) -> None:
        if argv[:2] == ["systemctl", "enable"] and argv[2] == UNIT_NAME:
            link = self.root / UNIT_LINK.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(f"../{UNIT_NAME}")
        elif argv[:2] == ["systemctl", "disable"] and argv[2] == UNIT_NAME:
            (self.root / UNIT_LINK.lstrip("/")).unlink(missing_ok=True)
        elif argv[:1] == ["modprobe"]:
            if argv[1] == "-r":
                self._unload(argv[2])
            else:
                self._load(argv[1])
        elif argv and argv[0].endswith("standin") and "set" in argv:
            subprocess.run(argv, env={**os.environ, "MSTCONFIG_STANDIN_ROOT": str(self.root)},
                           check=True,
                           capture_output=True)
        # update-grub, modprobe, daemon-reload: nothing to emulate (the reboot reads the file)

    def _modules(self) -> list[str]:
        path = self.root / "proc/modules"
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]

    def _write_modules(self, names: list[str]) -> None:
        (self.root / "proc/modules").write_text("".join(
            f"{name} 16384 0 - Live 0x0000000000000000\n" for name in names))

    def _load(self, name: str) -> None:
        module = name.replace("-", "_")
        if module not in self._modules():
            self._write_modules(self._modules() + [module])
        (self.root / "sys/bus/pci/drivers" / module.replace("_", "-")).mkdir(
            parents=True, exist_ok=True)

    def _unload(self, name: str) -> None:
        module = name.replace("-", "_")
        self._write_modules([m for m in self._modules() if m != module])
        driver = self.root / "sys/bus/pci/drivers" / module.replace("_", "-")
        if driver.exists() and not any(driver.iterdir()):
            driver.rmdir()

    def settle(self) -> None:
        """What the kernel does after vela's sysfs writes: size huge page pools as asked (up to
        what fits, see `hugepage_room`, none of their pages in use), and bind every device that
        was unbound and probed to its override or its default driver."""
        for pool in self.root.glob("sys/devices/system/node/node*/hugepages/hugepages-*"):
            self._fit(pool)
        self._keep_reserved_fields()
        for device in sorted(self.root.glob("sys/bus/pci/devices/*")):
            override = (device / "driver_override").read_text().strip()
            override = None if override in ("", "(null)") else override
            current = os.readlink(device / "driver").rsplit("/", 1)[-1] \
                if (device / "driver").is_symlink() else None
            wanted = override or self.defaults.get(device.name)
            if current != wanted and (override or current is None or current == "vfio-pci"):
                self._bind(device.name, override)
        for leftover in [self.root / "sys/bus/pci/drivers_probe",
                         *self.root.glob("sys/bus/pci/drivers/*/unbind")]:
            leftover.unlink(missing_ok=True)

    def _keep_reserved_fields(self) -> None:
        """Config-space writes the hardware ignores. A VF's Device Control Max_Payload_Size
        (bits 7:5) and Max_Read_Request_Size (14:12) are RsvdP, the PF's values apply (PCI
        Express Base Specification, SR-IOV chapter, "Device Control Register Changes" for VFs;
        drivers/pci/probe.c, pci_configure_mps: "MPS and MRRS fields are of type 'RsvdP' for
        VFs"). An ACS Control bit without its ACS Capability bit. What was written there reads back
        as the hardware holds it."""
        for address, function in self.host.functions.items():
            config = self.root / "sys/bus/pci/devices" / address / "config"
            if not config.exists():
                continue
            found = config.read_bytes()
            data = bytearray(found)
            caps = decode(found)
            if function.physfn is not None and caps.pcie is not None:
                control = caps.pcie.offset + 8
                power_on = self.host.config_space(address)[control:control + 2]
                held = int.from_bytes(power_on, "little")
                _keep_bits(data, control, VF_RSVDP_DEVCTL, held)
            if caps.acs is not None:
                # ACS Control: a control bit whose capability is not implemented is hardwired
                # to 0b (PCIe Base Specification, ACS Extended Capability, ACS Control
                # Register: "If the ACS ... functionality is not implemented, this bit must be
                # hardwired to 0b"); bits 15:7 are reserved.
                _keep_bits(data, caps.acs.offset + 6, 0xFFFF & ~caps.acs.capability, 0)
            if data != found:
                config.write_bytes(bytes(data))

    def _fit(self, pool: Path) -> None:
        node = int(pool.parent.parent.name.removeprefix("node"))
        size = int(pool.name.removeprefix("hugepages-").removesuffix("kB"))
        room = self.hugepage_room.get((node, size))
        pages = int((pool / "nr_hugepages").read_text())
        if room is not None and pages > room:
            pages = room
            (pool / "nr_hugepages").write_text(f"{pages}\n")
        (pool / "free_hugepages").write_text(f"{pages}\n")

    def _bind(self, address: str, driver: str | None) -> None:
        device = self.root / "sys/bus/pci/devices" / address
        link = device / "driver"
        if link.is_symlink():
            old = os.readlink(link).rsplit("/", 1)[-1]
            (self.root / "sys/bus/pci/drivers" / old / address).unlink(missing_ok=True)
            link.unlink()
        driver = driver or self.defaults.get(address)
        if driver:
            drivers = self.root / "sys/bus/pci/drivers" / driver
            drivers.mkdir(parents=True, exist_ok=True)
            real = device.resolve()
            link.symlink_to(os.path.relpath(drivers, real))
            (drivers / address).symlink_to(os.path.relpath(real, drivers))

    # -- a reboot --------------------------------------------------------------------------------

    def reboot(self) -> None:
        self.boots += 1
        (self.root / "proc/sys/kernel/random/boot_id").write_text(f"{uuid.uuid4()}\n")
        text = (self.root / GRUB_DEFAULTS.lstrip("/")).read_text()
        found = grub.variables(text)
        cmdline = " ".join([BOOT_PREFIX, *found[grub.LINUX], *found[grub.DEFAULT]])
        (self.root / "proc/cmdline").write_text(cmdline + "\n")
        vfio_ids = set((cmdline_value(cmdline, "vfio-pci.ids") or "").split(","))
        self._write_modules(sorted(self.host.modules))
        for driver in [self.root / "sys/bus/pci/drivers/vfio-pci"]:
            for entry in driver.glob("*"):
                entry.unlink()
            if driver.exists():
                driver.rmdir()
        for conf in sorted((self.root / "etc/modules-load.d").glob("*.conf")):
            for line in conf.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    self._load(line.strip())
        for address, function in self.host.functions.items():
            device = self.root / "sys/bus/pci/devices" / address
            (device / "config").write_bytes(self.host.config_space(address))
            (device / "driver_override").write_text("(null)\n")
            ids = f"{function.vendor_id:04x}:{function.device_id:04x}"
            self._bind(address, "vfio-pci" if ids in vfio_ids else None)
        self._boot_hugepages(cmdline)
        unit, script = (self.root / path.lstrip("/") for path in (UNIT_LINK, BOOT_SCRIPT))
        if unit.exists() and script.exists():
            # systemd runs the script on the live system (R=''); here the system is the root.
            text = script.read_text()
            live = "\nR=''\n"
            assert live in text, f"{BOOT_SCRIPT} does not set the sysroot as shell.script does"
            rooted = text.replace(live, f"\nR={shlex.quote(str(self.root))}\n", 1)
            result = subprocess.run(["sh", "-s"], input=rooted, capture_output=True, text=True)
            self.after(result.stderr)

    def _boot_hugepages(self, cmdline: str) -> None:
        size = cmdline_value(cmdline, "hugepagesz")
        count = cmdline_value(cmdline, "hugepages")
        kib = {"1G": 1048576, "2M": 2048}.get(size or "2M", 2048)
        nodes = sorted(self.host.nodes)
        per_node = {node: 0 for node in nodes}
        if count and ":" in count:
            for part in count.split(","):
                node, pages = part.split(":")
                per_node[int(node)] = int(pages)
        elif count:
            total = int(count)
            per_node = {node: total // len(nodes) + (1 if i < total % len(nodes) else 0)
                        for i, node in enumerate(nodes)}
        for node, pages in per_node.items():
            pool = self.root / f"sys/devices/system/node/node{node}/hugepages/hugepages-{kib}kB"
            (pool / "nr_hugepages").write_text(f"{pages}\n")
            self._fit(pool)


def _keep_bits(data: bytearray, offset: int, mask: int, value: int) -> None:
    """The 16-bit register at `offset`, with the bits in `mask` held at `value`."""
    written = int.from_bytes(data[offset:offset + 2], "little")
    data[offset:offset + 2] = ((written & ~mask) | (value & mask)).to_bytes(2, "little")


class KernelHost(LocalHost):
    """A local host rooted at the fixture, whose running system is `kernel`.

    After every command the fake kernel does what the live-system commands the script printed
    (through `vela_system`) would have done. The reboot request of the product's
    `reboot_and_wait` (`systemctl reboot`, systemctl(1): "Shut down and reboot the system") is
    a power cycle of the fake kernel, never of the machine running the tests; the product then
    waits for the new boot id exactly as on a real host.
    """

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__(str(kernel.root))
        self.kernel = kernel

    def _execute(self, command: str, stdin: bytes | None, deadline: float) -> CommandResult:
        if "systemctl reboot" in command:
            self.kernel.reboot()
            return CommandResult(command, 0, b"", b"")
        result = super()._execute(command, stdin, deadline)
        self.kernel.after(result.error_text)
        return result


def firmware_standin(root: Path) -> str:
    """The mstconfig stand-in as the firmware tool of the fixture at `root`: a wrapper that
    tells it where the fixture is (the real tool needs no such thing; the stand-in keeps its
    state and finds the devices under the root)."""
    wrapper = root.parent / f"{root.name}-mstconfig-standin"
    wrapper.write_text("#!/bin/sh\n" + f"MSTCONFIG_STANDIN_ROOT={shlex.quote(str(root))} "
                       f"exec {shlex.quote(str(STANDIN))} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)
