"""Kernel command line splitting, from recorded real /proc/cmdline outputs."""

from __future__ import annotations

from providers.facts.cmdline import cmdline_params, parse_cmdline
from tests.support.kernel_cmdline import cmdline_value
from tests.support.recorded import recorded


def _proc_cmdline(name: str) -> str:
    # The recording is the shell prompt line, then /proc/cmdline.
    return recorded(f"cmdline_dmesg/{name}").splitlines()[1]


def test_proxmox_intel_host():
    text = _proc_cmdline("proc-cmdline-suprox.txt")
    assert parse_cmdline(text) == ["BOOT_IMAGE=/boot/vmlinuz-6.5.11-8-pve",
                                   "root=/dev/mapper/pve-root", "ro", "quiet", "intel_iommu=on",
                                   "iommu=pt", "intel_pstate=enable"]
    assert cmdline_value(text, "intel_iommu") == "on"
    assert cmdline_value(text, "iommu") == "pt"
    assert cmdline_value(text, "hugepages") is None


def test_truenas_host_with_both_vendors_and_nested_equals():
    text = _proc_cmdline("proc-cmdline-nas.txt")
    params = dict(cmdline_params(text))
    assert params["root"] == "ZFS=boot-pool/ROOT/23.10.2"  # only the first '=' splits
    assert params["amd_iommu"] == "on" and params["intel_iommu"] == "on"
    assert params["kvm_amd.npt"] == "1"
    assert params["libata.allow_tpm"] == "1"
    assert " ".join(parse_cmdline(text)) == text.strip()


def test_quotes_keep_spaces_and_are_kept_verbatim():
    text = 'ro dyndbg="file drivers/pci/* +p" quiet'
    assert parse_cmdline(text) == ["ro", 'dyndbg="file drivers/pci/* +p"', "quiet"]
    assert cmdline_value(text, "dyndbg") == "file drivers/pci/* +p"


def test_dashes_and_underscores_are_the_same_key_and_the_last_value_wins():
    assert cmdline_value("intel-iommu=off intel_iommu=on", "intel_iommu") == "on"
    assert cmdline_params("nouveau.modeset=0 iommu") == [("nouveau.modeset", "0"),
                                                         ("iommu", None)]


def test_huge_page_arguments_are_keyed_by_the_pool_they_belong_to():
    """`hugepages=` counts pages of the size set just before it by `hugepagesz=` or
    `default_hugepagesz=`; one before any size counts pages of the default size
    (Documentation/admin-guide/mm/hugetlbpage.rst)."""
    from providers.facts.cmdline import param_keys

    assert param_keys(parse_cmdline("ro hugepagesz=2M hugepages=1024 quiet hugepagesz=1G "
                                    "hugepages=0:8,1:8")) == [
        "ro", "hugepagesz[2M]", "hugepages[2M]", "quiet", "hugepagesz[1G]", "hugepages[1G]"]
    assert param_keys(["hugepagesz=1024M", "hugepages=4", "default_hugepagesz=2M",
                       "hugepages=8"]) == ["hugepagesz[1G]", "hugepages[1G]",
                                           "default_hugepagesz", "hugepages[2M]"]
    assert param_keys(["hugepages=8"]) == ["hugepages"]  # the architecture's default size
    assert param_keys(["hugepages=8", "default_hugepagesz=1G"]) == ["hugepages[1G]",
                                                                    "default_hugepagesz"]
    # Context: GRUB_CMDLINE_LINUX comes before GRUB_CMDLINE_LINUX_DEFAULT on the line.
    assert param_keys(["hugepages=16"], before=["hugepagesz=1G"]) == ["hugepages[1G]"]
    assert param_keys(["hugepages=16"], after=["default_hugepagesz=1G"]) == ["hugepages[1G]"]
