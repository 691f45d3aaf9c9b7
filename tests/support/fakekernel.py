"""Plays the parts of a running system that a fake host root cannot: the kernel, systemd and
the bootloader, so the providers' real scripts can run against a fixture and converge.

Every command that may write runs traced (`tracing.run_traced`): each write to a sysfs
attribute reaches the fake kernel in order, a few milliseconds after it was made, and is handled
as the kernel's store function handles it (each rule below names its source), refusals included:
a refused write fails the call that made it, as the real write would. A script waits after each
call until the fake kernel has handled all it wrote. Commands that act on the live system go
through the shell library's `vela_system`, which under a sysroot prints `vela: sysroot ROOT:
not running: COMMAND`; the fake kernel does what that command would (load a module, enable a
unit, set firmware through the stand-in). Nothing moves a device between drivers except an
unbind, a bind, a probe or a boot.

`reboot()` is a power cycle: new boot id, the command line from /etc/default/grub, config space
back to power-on values, no VFs, the IOMMU on or off as the command line says, every device
probed as at boot (vfio-pci.ids, softdeps), huge pages from the command line, the firmware's
next-boot values made current (by the stand-in), then the enabled vela units, in the order
systemd would run them.
"""

from __future__ import annotations

import graphlib
import os
import re
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

from providers.facts.pciconfig import decode
from providers.host import LocalHost
from providers.host.base import CommandResult
from providers.host_tuning import grub
from providers.host_tuning.observe import GRUB_DEFAULTS
from tests.support.kernel_cmdline import cmdline_value

from .fakehost import FakeHost, Function, _HostWriter
from .tracing import Write, run_traced

STANDIN = Path(__file__).resolve().parent / "standins" / "mstconfig-standin"
VF_RSVDP_DEVCTL = 0x70E0  # Device Control: Max_Read_Request_Size 14:12, Max_Payload_Size 7:5
# What GRUB puts before the configured arguments (the fixture boots the same way).
BOOT_PREFIX = ("BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 "
               "root=UUID=3f1c2b9e-5a8d-4e61-9c0e-2b7f4a6d8e10 ro")
WANTS = "etc/systemd/system/multi-user.target.wants"
# PF drivers with an sriov_configure callback (drivers/net/ethernet/mellanox/mlx5/core/sriov.c
# mlx5_core_sriov_configure; drivers/net/ethernet/intel/igb/igb_main.c igb_pci_sriov_configure),
# and the driver that matches their VFs' device ids.
VF_DRIVERS = {"mlx5_core": "mlx5_core", "igb": "igbvf", "ixgbe": "ixgbevf"}
ENODEV, ENOENT, EBUSY, ERANGE, EINVAL = ("No such device", "No such file or directory",
                                         "Device or resource busy",
                                         "Numerical result out of range", "Invalid argument")


class FakeKernel:
    def __init__(self, host: FakeHost, root: Path) -> None:
        self.host = host
        self.root = Path(root)
        self._real_root = os.path.realpath(self.root)
        # The driver whose id table matches each device; udev loads it on demand (modalias).
        self.defaults = {address: function.driver
                         for address, function in host.functions.items()}
        # (node, page size in KiB) -> the most pages that node can hold; absent: no limit
        self.hugepage_room: dict[tuple[int, int], int] = {}
        self.boots = 0
        self.vfio_ids: set[str] = set()  # what vfio-pci's `ids` gave it when it loaded
        # Whether this kernel turns the IOMMU on when the command line does not say (as the
        # fixture booted: CONFIG_INTEL_IOMMU_DEFAULT_ON on Intel; AMD's is on by default).
        # A fixture that booted with intel_iommu=off says nothing of the default: on, as Debian
        # builds it (the lab's kernel brings it up without the argument).
        self.iommu_by_default = (host.iommu_active or host.iommu_table == "IVRS"
                                 or "intel_iommu=off" in host.cmdline.split())
        self.refusals: list[str] = []  # every write the kernel refused, for tests to read
        self.failed_units: list[str] = []  # units whose script exited non-zero at a boot

    # -- running commands ------------------------------------------------------------------------

    def run(self, command: str, stdin: bytes | None, timeout: float) -> CommandResult:
        """A command that may write (a vela script, a file write); reads run untraced."""
        if _only_reads(command, stdin):
            result = LocalHost(str(self.root))._execute(command, stdin, timeout)
            self._handle(Write("", result.stderr))
            return result
        code, stdout, stderr = run_traced(command, stdin, self._handle, timeout)
        return CommandResult(command, code, stdout, stderr)

    def _handle(self, write: Write) -> str | None:
        """What the kernel does for one write, at once (a refusal is also kept for tests)."""
        refused = self._write(write)
        if refused:
            self.refusals.append(refused)
        name = write.path.rsplit("/", 1)[-1]
        self._settle({name}, {write.path.rsplit("/", 2)[-2]} if name == "config" else set())
        return refused

    def _write(self, write: Write) -> str | None:
        text = write.data.decode(errors="replace")
        marker = f"vela: sysroot {self.root}: not running: "
        for line in text.splitlines():
            if line.startswith(marker):
                self._system(shlex.split(line[len(marker):]))
        prefix = self._real_root + "/sys/"
        if not write.path.startswith(prefix):
            return None
        parts = write.path[len(prefix) - len("sys/"):].split("/")
        name = parts[-1]
        if parts[:4] == ["sys", "bus", "pci", "drivers_probe"]:
            return self._drivers_probe(text.strip())
        if parts[:4] == ["sys", "bus", "pci", "drivers"] and name in ("bind", "unbind"):
            store = self._bind_store if name == "bind" else self._unbind_store
            return store(parts[4], text.strip())
        if parts[:2] == ["sys", "devices"] and len(parts) > 3:
            address = parts[-2]
            if name == "driver_override":
                return self._driver_override(address, text)
            if name == "sriov_numvfs":
                return self._sriov_numvfs(address, text)
            if name == "sriov_drivers_autoprobe":
                value = "1" if text.strip() in ("1", "y", "Y", "on") else "0"  # kstrtobool
                self._attribute(address, name).write_text(value + "\n")
        return None

    # -- the driver core (drivers/base/bus.c, dd.c; drivers/pci/pci-driver.c) --------------------

    def _device(self, address: str) -> Path:
        return self.root / "sys/bus/pci/devices" / address

    def _attribute(self, address: str, name: str) -> Path:
        return self._device(address) / name

    def driver_of(self, address: str) -> str | None:
        link = self._device(address) / "driver"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def _override(self, address: str) -> str | None:
        value = self._attribute(address, "driver_override").read_text().strip()
        return None if value in ("", "(null)") else value

    def _driver_override(self, address: str, text: str) -> str | None:
        """drivers/base/driver.c driver_set_override: the value up to a newline; empty clears.
        Only stored: it takes effect at the next probe (drivers/pci/pci-driver.c
        pci_match_device), never on a bound device."""
        if len(text) >= 4096:
            return f"driver_override of {address}: {EINVAL} (drivers/base/driver.c)"
        value = text.split("\n", 1)[0]
        self._attribute(address, "driver_override").write_text(f"{value or '(null)'}\n")
        return None

    def _unbind_store(self, driver: str, address: str) -> str | None:
        """drivers/base/bus.c unbind_store: only a device bound to this very driver."""
        if not self._device(address).exists() or self.driver_of(address) != driver:
            return f"unbind {address} from {driver}: {ENODEV} (drivers/base/bus.c unbind_store)"
        self._release(address)
        self._write_only(self.root / "sys/bus/pci/drivers" / driver / "unbind")
        return None

    def _bind_store(self, driver: str, address: str) -> str | None:
        """drivers/base/bus.c bind_store: the driver must match the device (its override
        included), and a bound device is busy."""
        if not self._device(address).exists() or driver not in self._candidates(address):
            return f"bind {address} to {driver}: {ENODEV} (drivers/base/bus.c bind_store)"
        if self.driver_of(address):
            return f"bind {address} to {driver}: {EBUSY} (drivers/base/dd.c device_driver_attach)"
        self._write_only(self.root / "sys/bus/pci/drivers" / driver / "bind")
        if not self._probe(address, driver):
            return f"bind {address} to {driver}: {EINVAL} (probe failed)"
        return None

    def _drivers_probe(self, address: str) -> str | None:
        """drivers/base/bus.c drivers_probe_store -> device_attach for an unbound device. A
        probe that fails leaves the device unbound without an error (the write succeeds)."""
        self._write_only(self.root / "sys/bus/pci/drivers_probe")
        if not self._device(address).exists():
            return f"drivers_probe {address}: {ENODEV} (drivers/base/bus.c drivers_probe_store)"
        if self.driver_of(address) is None:
            self._attach(address)
        return None

    def _candidates(self, address: str) -> list[str]:
        """The drivers that match a device, in the order the kernel tries them. With
        driver_override set, only that driver (drivers/pci/pci-driver.c pci_match_device). A VF
        of a PF whose sriov_drivers_autoprobe is 0 matches only its override
        (pci-driver.c pci_device_can_probe). vfio-pci matches the ids it was loaded with, and
        is tried first: its softdep loads it before the GPU's driver."""
        override = self._override(address)
        if override:
            return [override] if self._registered(override) else []
        function = self.host.functions[address]
        if function.physfn is not None:
            autoprobe = self._attribute(function.physfn.address, "sriov_drivers_autoprobe")
            if autoprobe.exists() and autoprobe.read_text().strip() == "0":
                return []
        matching = []
        if self._registered("vfio-pci") and _ids(function) in self.vfio_ids:
            matching.append("vfio-pci")
        default = self.defaults.get(address)
        if default:
            matching.append(default)
        return matching

    def _registered(self, driver: str) -> bool:
        """vfio-pci exists only once its module is loaded; device drivers that match an id are
        loaded on demand by udev (modalias), so they are always there to bind."""
        if driver == "vfio-pci":
            return (self.root / "sys/bus/pci/drivers/vfio-pci").is_dir()
        return driver in self.defaults.values() or driver in VF_DRIVERS.values()

    def _attach(self, address: str) -> None:
        """drivers/base/dd.c __device_attach: each matching driver in turn until one probes
        ("Ignore errors returned by ->probe so that the next driver can try its luck")."""
        for driver in self._candidates(address):
            if self._probe(address, driver):
                return

    def _probe(self, address: str, driver: str) -> bool:
        """vfio-pci refuses a device with no IOMMU group (drivers/vfio/group.c
        vfio_group_find_or_alloc: no group and not no-IOMMU mode -> -EINVAL)."""
        if driver == "vfio-pci" and not (self._device(address) / "iommu_group").exists():
            return False
        device = self._device(address)
        drivers = self.root / "sys/bus/pci/drivers" / driver
        drivers.mkdir(parents=True, exist_ok=True)
        real = device.resolve()
        (device / "driver").symlink_to(os.path.relpath(drivers, real))
        (drivers / address).symlink_to(os.path.relpath(real, drivers))
        return True

    def _release(self, address: str) -> None:
        """drivers/base/dd.c device_release_driver."""
        driver = self.driver_of(address)
        if driver is None:
            return
        (self._device(address) / "driver").unlink()
        (self.root / "sys/bus/pci/drivers" / driver / address).unlink(missing_ok=True)

    def _write_only(self, path: Path) -> None:
        """bind, unbind and drivers_probe are write-only attributes: nothing stays in them."""
        if path.is_file():
            path.unlink()

    # -- SR-IOV (drivers/pci/iov.c) --------------------------------------------------------------

    def _sriov_numvfs(self, address: str, text: str) -> str | None:
        """drivers/pci/iov.c sriov_numvfs_store, rule by rule."""
        pf = self.host.functions[address]
        attribute = self._attribute(address, "sriov_numvfs")
        attribute.write_text(f"{len(pf.virtfns)}\n")  # what reads show until it is done
        where = "(drivers/pci/iov.c sriov_numvfs_store)"
        if not text.strip().isdigit() or int(text) > 0xFFFF:
            return f"sriov_numvfs of {address} = {text.strip()!r}: {EINVAL} {where}"
        count = int(text)
        if count > (pf.sriov_total or 0):
            return f"sriov_numvfs of {address} = {count}: {ERANGE} (TotalVFs is " \
                   f"{pf.sriov_total}) {where}"
        if count == len(pf.virtfns):
            return None
        driver = self.driver_of(address)
        if driver is None:
            return f"sriov_numvfs of {address}: {ENOENT} (no driver bound to device) {where}"
        if driver not in VF_DRIVERS:
            # vfio-pci too: vfio_pci_sriov_configure refuses unless enable_sriov is set.
            return f"sriov_numvfs of {address}: {ENOENT} ({driver} does not support SR-IOV " \
                   f"configuration via sysfs) {where}"
        if count == 0:
            self._remove_vfs(pf)
            return None
        if pf.virtfns:
            return f"sriov_numvfs of {address} = {count}: {EBUSY} ({len(pf.virtfns)} VFs " \
                   f"already enabled. Disable before enabling {count} VFs) {where}"
        self._create_vfs(pf, count, VF_DRIVERS[driver])
        return None

    def _create_vfs(self, pf: Function, count: int, vf_driver: str) -> None:
        """VFs appear at the PF's First VF Offset and Stride (PCIe SR-IOV), each in its own
        IOMMU group where ACS isolates it, each probed unless autoprobe is off."""
        interface = pf.net[0] if pf.net else None
        prefix = re.sub(r"np\d+$", "", interface) if interface else None
        vfs = self.host.add_vfs(pf, count, net_prefix=prefix)
        writer = _HostWriter(self.host, self.root)
        groups = [int(path.name) for path in (self.root / "sys/kernel/iommu_groups").iterdir()]
        for index, vf in enumerate(vfs):
            self.defaults[vf.address] = vf_driver
            if self.host.iommu_active:
                owner = self.host._group_owner(vf)
                vf.iommu_group = owner.iommu_group if owner is not vf else max(groups) + 1
                groups.append(vf.iommu_group)
            writer._function(vf)
            writer._link(f"{writer._device_dir(pf)}/virtfn{index}", writer._device_dir(vf))
            self._attach(vf.address)
        self._attribute(pf.address, "sriov_numvfs").write_text(f"{count}\n")

    def _remove_vfs(self, pf: Function) -> None:
        writer = _HostWriter(self.host, self.root)
        for index, vf in enumerate(pf.virtfns):
            self._release(vf.address)
            group = self._device(vf.address) / "iommu_group"
            if group.is_symlink():
                members = group.resolve() / "devices"
                (members / vf.address).unlink(missing_ok=True)
                if not any(members.iterdir()):
                    shutil.rmtree(members.parent)
            shutil.rmtree(self.root / writer._device_dir(vf))
            self._device(vf.address).unlink()
            (self.root / writer._device_dir(pf) / f"virtfn{index}").unlink()
            del self.host.functions[vf.address]
            self.defaults.pop(vf.address, None)
        pf.virtfns = []
        self._attribute(pf.address, "sriov_numvfs").write_text("0\n")

    # -- commands run on the live system ---------------------------------------------------------

    def _system(self, argv: list[str]) -> None:
        if argv[:2] == ["systemctl", "enable"]:
            link = self.root / WANTS / argv[2]
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(f"../{argv[2]}")
        elif argv[:2] == ["systemctl", "disable"]:
            (self.root / WANTS / argv[2]).unlink(missing_ok=True)
        elif argv[:1] == ["modprobe"]:
            if argv[1] == "-r":
                self._unload(argv[2])
            else:
                self._load(argv[1])
        elif argv and argv[0].endswith("standin") and "set" in argv:
            subprocess.run(argv, env={**os.environ, "MSTCONFIG_STANDIN_ROOT": str(self.root)},
                           check=True, capture_output=True)
        # update-grub, daemon-reload, ip link: nothing to emulate (the reboot reads the file)

    def _modules(self) -> list[str]:
        path = self.root / "proc/modules"
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]

    def _write_modules(self, names: list[str]) -> None:
        (self.root / "proc/modules").write_text("".join(
            f"{name} 16384 0 - Live 0x0000000000000000\n" for name in names))

    def _load(self, name: str) -> None:
        """modprobe: the module and its driver; vfio-pci takes the `ids` its options give
        (modprobe.d(5) `options`, and `vfio-pci.ids` from the command line)."""
        module = name.replace("-", "_")
        if module not in self._modules():
            self._write_modules(self._modules() + [module])
            if module == "vfio_pci":
                self.vfio_ids = self._configured_vfio_ids()
        (self.root / "sys/bus/pci/drivers" / module.replace("_", "-")).mkdir(
            parents=True, exist_ok=True)

    def _unload(self, name: str) -> None:
        module = name.replace("-", "_")
        self._write_modules([m for m in self._modules() if m != module])
        driver = self.root / "sys/bus/pci/drivers" / module.replace("_", "-")
        if driver.exists() and not any(driver.iterdir()):
            driver.rmdir()

    def _configured_vfio_ids(self) -> set[str]:
        cmdline = (self.root / "proc/cmdline").read_text()
        ids = set((cmdline_value(cmdline, "vfio-pci.ids") or "").split(","))
        for line in self._modprobe_lines():
            words = line.split()
            if words[:2] == ["options", "vfio-pci"] or words[:2] == ["options", "vfio_pci"]:
                for word in words[2:]:
                    if word.startswith("ids="):
                        ids |= set(word[4:].split(","))
        return ids - {""}

    def _modprobe_lines(self) -> list[str]:
        lines = []
        for conf in sorted((self.root / "etc/modprobe.d").glob("*.conf")):
            lines += [line.strip() for line in conf.read_text().splitlines()
                      if line.strip() and not line.startswith("#")]
        return lines

    # -- after each call -------------------------------------------------------------------------

    def _settle(self, names: set[str], configs: set[str]) -> None:
        """What holds after writes to these attributes and config spaces: huge page pools sized
        as asked, up to what fits (see `hugepage_room`; none of their pages in use), and the
        config-space fields the hardware keeps."""
        if "nr_hugepages" in names:
            for pool in self.root.glob("sys/devices/system/node/node*/hugepages/hugepages-*"):
                self._fit(pool)
        self._keep_reserved_fields(configs)

    def _keep_reserved_fields(self, addresses: set[str]) -> None:
        """Config-space writes the hardware ignores. A VF's Device Control Max_Payload_Size
        (bits 7:5) and Max_Read_Request_Size (14:12) are RsvdP, the PF's values apply (PCI
        Express Base Specification, SR-IOV chapter, "Device Control Register Changes" for VFs;
        drivers/pci/probe.c, pci_configure_mps: "MPS and MRRS fields are of type 'RsvdP' for
        VFs"). An ACS Control bit without its ACS Capability bit. What was written there reads back
        as the hardware holds it."""
        for address in sorted(addresses & set(self.host.functions)):
            function = self.host.functions[address]
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

    # -- a reboot --------------------------------------------------------------------------------

    def reboot(self) -> None:
        self.boots += 1
        (self.root / "proc/sys/kernel/random/boot_id").write_text(f"{uuid.uuid4()}\n")
        text = (self.root / GRUB_DEFAULTS.lstrip("/")).read_text()
        found = grub.variables(text)
        cmdline = " ".join([BOOT_PREFIX, *found[grub.LINUX], *found[grub.DEFAULT]])
        (self.root / "proc/cmdline").write_text(cmdline + "\n")
        for pf in [f for f in self.host.functions.values() if f.virtfns]:
            # VF Enable is 0 after a reset (PCIe SR-IOV, SR-IOV Control): no VFs until a
            # sriov_numvfs write makes them again.
            self._release_all(pf.virtfns)
            self._remove_vfs(pf)
        self._release_all(list(self.host.functions.values()))
        self._boot_iommu(cmdline)
        self._boot_modules()
        for address in self.host.functions:
            device = self._device(address)
            (device / "config").write_bytes(self.host.config_space(address))
            (device / "driver_override").write_text("(null)\n")
        for address in self.host.functions:
            self._attach(address)
        self._boot_hugepages(cmdline)
        self._run_units()

    def _release_all(self, functions: list[Function]) -> None:
        for function in functions:
            self._release(function.address)

    def _boot_modules(self) -> None:
        """The modules of the fixture, then modules-load.d(5); vfio-pci also when a softdep
        (modprobe.d(5) `softdep X pre: vfio-pci`) loads it before a module that is loaded."""
        self._write_modules(sorted(self.host.modules))
        vfio = self.root / "sys/bus/pci/drivers/vfio-pci"
        if vfio.exists():
            vfio.rmdir()
        for conf in sorted((self.root / "etc/modules-load.d").glob("*.conf")):
            for line in conf.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    self._load(line.strip())
        for line in self._modprobe_lines():
            words = line.split()
            if words[:1] == ["softdep"] and len(words) > 3 and words[2] == "pre:" \
                    and words[1] in self.host.modules:
                for module in words[3:]:
                    self._load(module)

    def _boot_iommu(self, cmdline: str) -> None:
        """The IOMMU is on when the firmware publishes its table (DMAR, IVRS) and the kernel
        uses it: intel_iommu=on/off decides on Intel, else the kernel's default
        (CONFIG_INTEL_IOMMU_DEFAULT_ON, drivers/iommu/intel/Kconfig); amd_iommu=off turns the
        AMD one off (Documentation/admin-guide/kernel-parameters.txt). Groups follow
        (drivers/iommu/iommu.c); without an IOMMU no device has a group."""
        tokens = cmdline.split()
        active = self.iommu_by_default
        if self.host.iommu_table == "DMAR" and {"intel_iommu=on", "intel_iommu=off"} & set(tokens):
            active = "intel_iommu=on" in tokens
        if self.host.iommu_table == "IVRS" and "amd_iommu=off" in tokens:
            active = False
        active = active and self.host.iommu_table is not None and "iommu=off" not in tokens
        for link in self.root.glob("sys/bus/pci/devices/*/iommu_group"):
            link.unlink()
        for path in [*self.root.glob("sys/kernel/iommu_groups/*"),
                     *self.root.glob("sys/class/iommu/*")]:
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path)
        for function in self.host.functions.values():
            function.iommu_group = None
        self.host.iommu_active = active
        writer = _HostWriter(self.host, self.root)
        writer._iommu()
        if not active:
            return
        self.host._assign_iommu_groups()
        for function in self.host.functions.values():
            group = f"sys/kernel/iommu_groups/{function.iommu_group}"
            writer._link(f"{writer._device_dir(function)}/iommu_group", group)
            writer._link(f"{group}/devices/{function.address}", writer._device_dir(function))

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

    # -- systemd ---------------------------------------------------------------------------------

    def unit_order(self) -> list[str]:
        """The enabled vela units in the order systemd starts them. A unit with default
        dependencies is ordered after sysinit.target (systemd.special(7)), so after every unit
        that says Before=sysinit.target. systemd breaks an ordering cycle by deleting a job
        ("Found ordering cycle"): here a cycle fails the test."""
        units = {}
        for link in sorted((self.root / WANTS).glob("vela-*.service")):
            path = self.root / "etc/systemd/system" / link.name
            if path.exists():
                units[link.name] = _unit_settings(path.read_text())
        graph: dict[str, set[str]] = {name: set() for name in units}
        for name, settings in units.items():
            for other, other_settings in units.items():
                early = "sysinit.target" in other_settings["Before"]
                if other != name and (
                        other in settings["After"] or name in other_settings["Before"]
                        or (early and settings["DefaultDependencies"] != ["no"])):
                    graph[name].add(other)
        try:
            return list(graphlib.TopologicalSorter(graph).static_order())
        except graphlib.CycleError as cycle:
            raise AssertionError(f"systemd ordering cycle between vela units: {cycle.args[1]}"
                                 ) from None

    def _run_units(self) -> None:
        for name in self.unit_order():
            settings = _unit_settings((self.root / "etc/systemd/system" / name).read_text())
            script = self.root / settings["ExecStart"][0].lstrip("/")
            text = script.read_text()
            live = "\nR=''\n"
            assert live in text, f"{script} does not set the sysroot as shell.script does"
            # systemd runs the script on the live system (R=''); here the system is the root.
            rooted = text.replace(live, f"\nR={shlex.quote(str(self.root))}\n", 1)
            result = self.run("sh -s", rooted.encode(), timeout=120)
            if result.exit_code != 0:
                self.failed_units.append(f"{name}: {result.error_text.strip()}")

    # -- a guest opens a device through vfio (drivers/vfio/pci/vfio_pci_core.c) ------------------

    def vfio_open(self, address: str, *, kernel_ats: bool = False) -> str | None:
        """QEMU opening a vfio-pci function as libvirt starts a guest that holds it. Refused
        (the message, also in `refusals`) as the real open is refused: a function vfio-pci does
        not hold (drivers/vfio/group.c vfio_group_get_device_fd finds only devices a vfio driver
        registered: ENODEV), or one whose IOMMU group has a member bound to a driver that uses
        the kernel's DMA API (drivers/iommu/iommu.c iommu_group_claim_dma_owner: EPERM while
        such a driver holds owner_cnt; vfio-pci, pci-stub and pcieport set driver_managed_dma).

        Then vfio_pci_core_enable resets the function: pci_try_reset_function (drivers/pci/
        pci.c) saves its state (pci_dev_save_and_disable), resets it and restores
        (pci_dev_restore -> pci_restore_state). The reset is an FLR where Device Capabilities
        says FLR Capable (bit 28; pcie_reset_flr), which every SR-IOV VF implements; a function
        without one is opened as it is (vfio_pci_core_enable: reset_works = !ret). After the
        FLR the config space holds its power-on values except what pci_restore_state writes
        back: the standard header (pci_restore_config_space, dwords 0-15), the PCI Express
        capability's control registers (pci_save_pcie_state: DevCtl, LnkCtl, SltCtl, RtCtl,
        DevCtl2, LnkCtl2, SltCtl2), AER's (pci_restore_aer_state), and ATS only if the kernel
        enabled ATS itself (drivers/pci/ats.c pci_restore_ats_state returns unless
        dev->ats_enabled, which only pci_enable_ats sets, e.g. the Intel IOMMU driver at domain
        attach where the DMAR table allows ATS: drivers/iommu/intel/iommu.c
        iommu_enable_dev_iotlb): `kernel_ats`. So ATS set from user space through sysfs
        `config` (setpci, vela_cfg_write) reads back as its power-on 0."""
        where = "(drivers/vfio/group.c vfio_group_get_device_fd)"
        refused = None
        if self.driver_of(address) != "vfio-pci":
            refused = f"vfio open {address}: {ENODEV} (bound to " \
                      f"{self.driver_of(address) or 'no driver'}, not vfio-pci) {where}"
        group = self.host.functions[address].iommu_group
        users = sorted(f"{other.address} ({self.driver_of(other.address)})"
                       for other in self.host.functions.values()
                       if other.iommu_group == group and other.address != address
                       and self.driver_of(other.address) not in (None, "vfio-pci", "pci-stub",
                                                                 "pcieport"))
        if refused is None and users:
            refused = f"vfio open {address}: Operation not permitted (IOMMU group {group} " \
                      f"also holds {', '.join(users)}) (drivers/iommu/iommu.c " \
                      f"iommu_group_claim_dma_owner)"
        if refused:
            self.refusals.append(refused)
            return refused
        config = self._device(address) / "config"
        current = config.read_bytes()
        caps = decode(current)
        if caps.pcie is None or not self._flr_capable(current, caps.pcie.offset):
            return None
        data = bytearray(self.host.config_space(address))
        data[:0x40] = current[:0x40]  # pci_restore_config_space
        for register in (0x08, 0x10, 0x18, 0x1C, 0x28, 0x30, 0x38):  # pci_restore_pcie_state
            offset = caps.pcie.offset + register
            data[offset:offset + 2] = current[offset:offset + 2]
        aer = self._ext_capability(current, 0x0001)  # PCI_EXT_CAP_ID_ERR
        if aer is not None:
            data[aer:aer + 0x48] = current[aer:aer + 0x48]  # pci_restore_aer_state
        if kernel_ats and caps.ats is not None:
            # pci_restore_ats_state: PCI_ATS_CTRL_ENABLE (and, on a PF, the STU it chose).
            control = caps.ats.offset + 6
            physfn = self.host.functions[address].physfn is None
            value = 0x8000 | (caps.ats.control & 0x1F if physfn else 0)
            data[control:control + 2] = value.to_bytes(2, "little")
        config.write_bytes(bytes(data))
        return None

    @staticmethod
    def _flr_capable(config: bytes, pcie: int) -> bool:
        """Device Capabilities (CAP_EXP+4) bit 28, Function Level Reset Capability (PCIe Base
        Specification, Device Capabilities Register; drivers/pci/pci.c pcie_reset_flr)."""
        return bool(int.from_bytes(config[pcie + 4:pcie + 8], "little") & (1 << 28))

    @staticmethod
    def _ext_capability(config: bytes, wanted: int) -> int | None:
        """Where an extended capability starts: the chain from 0x100, each header's ID in bits
        15:0 and the next offset in bits 31:20 (drivers/pci/pci.c pci_find_next_ext_capability)."""
        offset, seen = 0x100, set()
        while 0x100 <= offset < len(config) - 3 and offset not in seen:
            seen.add(offset)
            header = int.from_bytes(config[offset:offset + 4], "little")
            if header & 0xFFFF == wanted:
                return offset
            offset = header >> 20
        return None


GATHER_HEADER = b"# shellcheck shell=sh\n# Gather every hardware fact"


def _only_reads(command: str, stdin: bytes | None) -> bool:
    """Observation scripts (gather.sh and its sections) and file reads (`cat -- PATH`) write
    nothing: they run untraced, which is faster."""
    return (stdin or b"").startswith(GATHER_HEADER) or " cat -- " in f" {command} "


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {"Before": [], "After": [], "DefaultDependencies": [],
                                      "ExecStart": []}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in settings:
            settings[key.strip()] += value.split()
    return settings


def _ids(function: Function) -> str:
    return f"{function.vendor_id:04x}:{function.device_id:04x}"


def _keep_bits(data: bytearray, offset: int, mask: int, value: int) -> None:
    """The 16-bit register at `offset`, with the bits in `mask` held at `value`."""
    written = int.from_bytes(data[offset:offset + 2], "little")
    data[offset:offset + 2] = ((written & ~mask) | (value & mask)).to_bytes(2, "little")


class KernelHost(LocalHost):
    """A local host rooted at the fixture, whose running system is `kernel`.

    Every command runs under the fake kernel (`FakeKernel.run`). The reboot request of the
    product's `reboot_and_wait` (`systemctl reboot`, systemctl(1): "Shut down and reboot the
    system") is a power cycle of the fake kernel, never of the machine running the tests; the
    product then waits for the new boot id exactly as on a real host.
    """

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__(str(kernel.root))
        self.kernel = kernel

    def _execute(self, command: str, stdin: bytes | None, deadline: float) -> CommandResult:
        if "systemctl reboot" in command:
            self.kernel.reboot()
            return CommandResult(command, 0, b"", b"")
        return self.kernel.run(command, stdin, deadline)


def firmware_standin(root: Path) -> str:
    """The mstconfig stand-in as the firmware tool of the fixture at `root`: a wrapper that
    tells it where the fixture is (the real tool needs no such thing; the stand-in keeps its
    state and finds the devices under the root)."""
    wrapper = root.parent / f"{root.name}-mstconfig-standin"
    wrapper.write_text("#!/bin/sh\n" + f"MSTCONFIG_STANDIN_ROOT={shlex.quote(str(root))} "
                       f"exec {shlex.quote(str(STANDIN))} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)
