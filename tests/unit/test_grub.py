"""Kernel command line edits in /etc/default/grub: in place, reversible byte for byte."""

from __future__ import annotations

import pytest

from providers.host_tuning import grub
from tests.support.recorded import recorded

DEBIAN = recorded("files/etc-default-grub-debian12.txt")
WANTED = {"intel_iommu": "intel_iommu=on", "iommu": "iommu=pt",
          "vfio_pci.ids": "vfio-pci.ids=10de:20b2", "hugepages": "hugepages=16"}


def _restore_placement(text: str, placement: dict) -> dict:
    found = grub.variables(text)
    keyed = {name: {grub.param_key(t): t for t in tokens} for name, tokens in found.items()}
    return {name: {key: keyed[name].get(key) for key in keys}
            for name, keys in placement.items()}


def test_fresh_debian_file_gets_our_arguments_and_keeps_the_rest():
    placement = grub.placement(DEBIAN, WANTED)
    edited = grub.edit(DEBIAN, placement)
    assert 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt vfio-pci.ids=10de:20b2 hugepages=16"' \
        in edited
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"' in edited
    assert edited.replace(edited.splitlines()[9], "") == DEBIAN.replace(DEBIAN.splitlines()[9], "")
    assert grub.configured(edited) == {**WANTED, "quiet": "quiet"}
    original = _restore_placement(DEBIAN, placement)
    assert grub.edit(edited, original) == DEBIAN  # byte for byte


def test_arguments_already_present_are_replaced_where_they_stand():
    text = ('GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=off splash"\n'
            "GRUB_CMDLINE_LINUX='console=ttyS0 iommu=nopt hugepages=4 hugepages=8'\n")
    placement = grub.placement(text, WANTED)
    assert placement[grub.DEFAULT] == {"intel_iommu": "intel_iommu=on"}
    edited = grub.edit(text, placement)
    assert edited == ('GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on splash"\n'
                      "GRUB_CMDLINE_LINUX='console=ttyS0 iommu=pt hugepages=16 "
                      "vfio-pci.ids=10de:20b2'\n")
    assert grub.configured(edited)["intel_iommu"] == "intel_iommu=on"
    restored = grub.edit(edited, _restore_placement(text, placement))
    # The duplicate collapses into one argument holding its effective (last) value.
    assert restored == ('GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=off splash"\n'
                        "GRUB_CMDLINE_LINUX='console=ttyS0 iommu=nopt hugepages=8'\n")


def test_missing_variable_is_added_and_removal_works():
    edited = grub.edit("GRUB_TIMEOUT=5\n", grub.placement("GRUB_TIMEOUT=5\n", WANTED))
    assert edited.endswith('GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt vfio-pci.ids=10de:20b2 '
                           'hugepages=16"\n')
    removed = grub.edit(edited, {grub.LINUX: {"iommu": None}})
    assert "iommu=pt" not in removed and "intel_iommu=on" in removed


def test_shell_expansions_are_not_edited_blindly():
    with pytest.raises(grub.GrubDefaultsError, match="plain quoted"):
        grub.edit('GRUB_CMDLINE_LINUX=$EXTRA\n', {grub.LINUX: WANTED})


def test_grubby_arguments():
    add, remove = grub.grubby_arguments("ro crashkernel=auto iommu=nopt",
                                        {"iommu": "iommu=pt", "hugepages": None,
                                         "crashkernel": None})
    assert add == ["iommu=pt"] and remove == ["crashkernel=auto"]
