"""The lab's Debian 12 host image: built once, cached by its recipe, rebuilt when that changes.

Built without loop devices or mounts, so it works in containers and CI:
1. `mmdebstrap` a root filesystem (packages from this machine's own apt mirrors) and lay the
   overlay in `lab/image/overlay` over it;
2. `mkfs.ext4 -d` it into a partition image with a fixed UUID;
3. build GRUB's EFI binary with `grub-mkimage` (it finds the root filesystem by UUID and reads
   /boot/grub/grub.cfg there, which the host's own `update-grub` rewrites) into a FAT EFI system
   partition made with `mkfs.vfat` and mtools, at the removable-media path OVMF boots;
4. join both into a GPT disk with `sgdisk` and `dd`.

The cache key (the recipe digest) covers the package list, the overlay files and this module, so
editing any of them rebuilds the image at the next `lab up` or `scripts/setup`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from providers.host_tuning import grub

from .apt_sources import debian_sources

RELEASE = "bookworm"
PACKAGES = [
    # boot: kernel, initramfs, GRUB with update-grub, systemd
    "linux-image-amd64", "initramfs-tools", "grub-efi-amd64", "systemd-sysv", "udev", "dbus",
    # what vela uses on a hypervisor host
    "openssh-server", "pciutils", "iproute2", "ethtool", "kmod", "procps",
    # nested guests: libvirt and QEMU inside the lab host
    "libvirt-daemon-system", "libvirt-clients", "qemu-system-x86", "qemu-utils",
    # xmllint, which virt-xml-validate runs: libvirt-daemon recommends it, so a default Debian
    # install has it; GpuVm validates a domain with the host's own schema through it
    "libxml2-utils",
    "dnsmasq-base", "iptables",  # libvirt's NAT network hands guests DHCP leases
    # the minimal nested guest (kernel + initramfs with a static busybox; xz unpacks the
    # kernel's ELF image from Debian's bzImage, which the guest boots without decompressing)
    "busybox-static", "cpio", "xz-utils",
    # the acceptance benchmark on the lab: iperf3 host to host, and in the nested guests with
    # an SSH server (dropbear: small, its libraries copied into the guest's initramfs)
    "iperf3", "dropbear-bin",
]
# Units that only slow a lab boot down (timers for maintenance jobs, waiting for links).
MASKED_UNITS = ["apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "fstrim.timer",
                "e2scrub_all.timer", "e2scrub_reap.service",
                "systemd-networkd-wait-online.service"]
OVERLAY = Path(__file__).resolve().parent / "image" / "overlay"
DISK_SIZE = 8 * 1024 ** 3
ESP_SIZE = 64 * 1024 ** 2
ALIGN = 1024 ** 2
GRUB_MODULES = ["part_gpt", "fat", "ext2", "normal", "linux", "search", "search_fs_uuid",
                "configfile", "echo", "test", "gzio", "efi_gop", "all_video", "ls", "cat",
                "reboot", "halt", "serial", "terminal"]


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    directory: Path
    digest: str

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def root_uuid(self) -> str:
        return str(uuid.UUID(self.digest[:32]))

    @property
    def ready(self) -> bool:
        return (self.directory / "READY").exists() and self.disk.exists()


def recipe_digest() -> str:
    digest = hashlib.sha256()
    digest.update(f"{RELEASE}\n{' '.join(PACKAGES)}\n{' '.join(MASKED_UNITS)}\n".encode())
    digest.update(f"{DISK_SIZE} {ESP_SIZE} {' '.join(GRUB_MODULES)}\n".encode())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(OVERLAY.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(OVERLAY)).encode())
            digest.update(oct(path.stat().st_mode & 0o777).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("VELA_LAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vela", "lab")
    return Path(base)


def current_image() -> Image:
    digest = recipe_digest()
    return Image(cache_dir() / "images" / digest[:16], digest)


def ensure_image(log=print) -> Image:
    """The image for the current recipe, building it if it is not in the cache."""
    image = current_image()
    if image.ready:
        return image
    image.directory.parent.mkdir(parents=True, exist_ok=True)
    with open(image.directory.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `lab up`s at once build it once
        if not image.ready:
            _build(image, log)
    return image


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, **kwargs)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} is not installed: run scripts/setup") from exc
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or b"").decode(errors="replace")[-3000:]
        raise ImageBuildError(f"`{' '.join(argv[:6])} ...` failed ({exc.returncode}):\n"
                              f"{output}") from exc


def _build(image: Image, log) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the lab image needs root (mmdebstrap, device nodes "
                              "and file ownership in the root filesystem); run scripts/setup "
                              "as root or with sudo")
    started = time.monotonic()
    shutil.rmtree(image.directory, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=image.directory.parent))
    try:
        rootfs = work / "rootfs"
        log(f"lab image: bootstrapping Debian {RELEASE} (mmdebstrap) ...")
        _bootstrap(rootfs, work)
        version = _customize(rootfs, image)
        log("lab image: making the root filesystem, the EFI partition and the disk ...")
        root_size = DISK_SIZE - ESP_SIZE - 2 * ALIGN
        _run(["mkfs.ext4", "-q", "-F", "-U", image.root_uuid, "-L", "root", "-d", str(rootfs),
              str(work / "root.img"), f"{root_size // 1024}k"])
        _esp(work, image)
        _disk(work, root_size)
        shutil.copy(rootfs / f"boot/vmlinuz-{version}", work / "vmlinuz")
        shutil.rmtree(rootfs)
        for name in ["root.img", "esp.img", "early.cfg", "BOOTX64.EFI", "sources"]:
            (work / name).unlink(missing_ok=True)
        (work / "READY").write_text(f"{image.digest}\nkernel {version}\n")
        work.rename(image.directory)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"lab image: built in {time.monotonic() - started:.0f} s at {image.directory}")


def _bootstrap(rootfs: Path, work: Path) -> None:
    sources = work / "sources"
    sources.write_text("\n".join(source.deb822() for source in debian_sources(RELEASE)))
    _run(["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          "--aptopt=Acquire::Retries \"3\"", RELEASE, str(rootfs), str(sources)])


def _customize(rootfs: Path, image: Image) -> str:
    """Lay the overlay over the root filesystem and make it a bootable, anonymous host."""
    shutil.copytree(OVERLAY, rootfs, dirs_exist_ok=True, symlinks=True)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every host gets its own key at boot, never a shared one
    (rootfs / "etc/machine-id").write_text("")  # systemd makes a fresh one per host
    (rootfs / "etc/hostname").write_text("vela-lab\n")
    (rootfs / "etc/fstab").write_text(f"UUID={image.root_uuid} / ext4 errors=remount-ro 0 1\n")
    _run(["chroot", str(rootfs), "systemctl", "enable", "systemd-networkd.service",
          "vela-lab-seed.service", "vela-lab-first-grub.service"])
    _run(["chroot", str(rootfs), "systemctl", "mask", *MASKED_UNITS])
    # As a Debian install leaves it (the package script cannot do it in a chroot): libvirt's NAT
    # network `default` starts at boot, so guests have a management network.
    autostart = rootfs / "etc/libvirt/qemu/networks/autostart/default.xml"
    autostart.parent.mkdir(parents=True, exist_ok=True)
    if not autostart.is_symlink():
        autostart.symlink_to("../default.xml")
    _run(["chroot", str(rootfs), "/usr/local/sbin/vela-build-guest-initrd"])
    shutil.copytree(rootfs / "usr/lib/grub/x86_64-efi", rootfs / "boot/grub/x86_64-efi",
                    dirs_exist_ok=True)
    versions = sorted(path.name.removeprefix("vmlinuz-")
                      for path in (rootfs / "boot").glob("vmlinuz-*"))
    if not versions:
        raise ImageBuildError("the root filesystem has no kernel in /boot")
    version = versions[-1]
    # A first grub.cfg, since update-grub cannot run in a chroot: the host's first boot replaces
    # it with update-grub's (vela-lab-first-grub.service). It boots the arguments
    # /etc/default/grub names, so the first boot and later ones agree.
    defaults = grub.variables((rootfs / "etc/default/grub").read_text())
    kernel_args = " ".join(defaults[grub.LINUX] + defaults[grub.DEFAULT])
    (rootfs / "boot/grub/grub.cfg").write_text(
        "set default=0\nset timeout=0\nserial --unit=0 --speed=115200\n"
        "terminal_input console serial\nterminal_output console serial\n"
        "menuentry 'Debian GNU/Linux' {\n"
        f"  search --no-floppy --fs-uuid --set=root {image.root_uuid}\n"
        f"  linux /boot/vmlinuz-{version} root=UUID={image.root_uuid} ro {kernel_args}\n"
        f"  initrd /boot/initrd.img-{version}\n}}\n")
    marker = rootfs / "var/lib/vela-lab/grub-cfg-from-image"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    return version


def _esp(work: Path, image: Image) -> None:
    early = work / "early.cfg"
    early.write_text(f"search.fs_uuid {image.root_uuid} root\nset prefix=($root)/boot/grub\n")
    efi = work / "BOOTX64.EFI"
    _run(["grub-mkimage", "-O", "x86_64-efi", "-p", "/boot/grub", "-c", str(early),
          "-o", str(efi), *GRUB_MODULES])
    esp = work / "esp.img"
    _run(["mkfs.vfat", "-C", "-F", "32", "-i", image.digest[:8], "-n", "EFI", str(esp),
          str(ESP_SIZE // 1024)])
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"])
    _run(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"])


def _disk(work: Path, root_size: int) -> None:
    disk = work / "disk.raw"
    with open(disk, "wb") as handle:
        handle.truncate(DISK_SIZE)
    esp_start = ALIGN // 512
    esp_end = esp_start + ESP_SIZE // 512 - 1
    root_start = esp_end + 1
    root_end = root_start + root_size // 512 - 1
    # Without -q: with it, sgdisk once created no partitions on a plain file.
    _run(["sgdisk", "-n", f"1:{esp_start}:{esp_end}", "-t", "1:ef00", "-c", "1:EFI",
          "-n", f"2:{root_start}:{root_end}", "-t", "2:8304", "-c", "2:root", str(disk)])
    for name, start in [("esp.img", esp_start), ("root.img", root_start)]:
        _run(["dd", f"if={work / name}", f"of={disk}", "bs=1M", f"seek={start * 512}",
              "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"])
