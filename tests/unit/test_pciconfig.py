"""The config-space decoder against real recorded dumps, with lspci's decoding as the oracle."""

from __future__ import annotations

import pytest

from providers.facts.pciconfig import decode
from tests.support.lspci_text import parse_lspci_hex_dump, parse_lspci_verbose
from tests.support.recorded import RECORDED, recorded, recorded_files

DUMPS = recorded_files("pci_config")


def _load(path):
    body = recorded(f"pci_config/{path.name}")
    (slot, raw), = parse_lspci_hex_dump(body).items()
    decoded = path.name.replace(".txt", ".lspci-vvv.txt")
    oracle_text = (RECORDED / "pci_config" / decoded).read_text()
    oracle = parse_lspci_verbose(oracle_text)
    assert len(oracle) == 1, f"{path.name}: expected one device in lspci's decoding"
    return slot, raw, next(iter(oracle.values()))


def test_every_recorded_dump_is_a_full_config_space():
    assert len(DUMPS) >= 8
    for path in DUMPS:
        _, raw, _ = _load(path)
        assert len(raw) == 4096, path.name


@pytest.mark.parametrize("path", DUMPS, ids=lambda p: p.stem)
def test_decoder_agrees_with_lspci(path):
    _, raw, lspci = _load(path)
    caps = decode(raw)
    assert caps.pcie is not None
    assert caps.pcie.port_type == lspci.port_type
    assert caps.pcie.max_read_request == lspci.max_read_request
    if lspci.acs_supported is None:
        assert caps.acs is None
    else:
        assert caps.acs.supported() == lspci.acs_supported
        assert caps.acs.enabled() == lspci.acs_enabled
    assert (caps.ats is not None) == lspci.ats_present
    if caps.ats is not None:
        assert caps.ats.enabled == lspci.ats_enabled
    if lspci.sriov_total_vfs is None:
        assert caps.sriov is None
    else:
        assert caps.sriov.total_vfs == lspci.sriov_total_vfs
        assert caps.sriov.num_vfs == lspci.sriov_num_vfs
        assert caps.sriov.vf_offset == lspci.sriov_vf_offset
        assert caps.sriov.vf_stride == lspci.sriov_vf_stride
        assert caps.sriov.vf_device_id == lspci.sriov_vf_device


def test_the_corpus_covers_what_vela_reads():
    """ACS on and off, ATS on and off, SR-IOV, and every port type the HGX layout has."""
    decoded = [decode(_load(path)[1]) for path in DUMPS]
    port_types = {caps.pcie.port_type for caps in decoded}
    assert {"root_port", "upstream_port", "downstream_port", "endpoint"} <= port_types
    assert any(caps.acs and caps.acs.enabled() for caps in decoded)
    assert any(caps.acs and not caps.acs.enabled() for caps in decoded)
    assert any(caps.ats and caps.ats.enabled for caps in decoded)
    assert any(caps.ats and not caps.ats.enabled for caps in decoded)
    assert any(caps.sriov and caps.sriov.num_vfs for caps in decoded)


def test_unprivileged_read_reports_capabilities_as_unknown():
    """Non-root readers get 64 bytes of config space: nothing past the header is guessed."""
    _, raw, _ = _load(DUMPS[0])
    caps = decode(raw[:64])
    assert caps.config_size == 64
    assert caps.pcie is None and caps.acs is None and caps.ats is None and caps.sriov is None
    assert not caps.extended_readable


def test_256_byte_read_has_pcie_but_no_extended_capabilities():
    path = next(p for p in DUMPS if "82576" in p.name)
    _, raw, lspci = _load(path)
    caps = decode(raw[:256])
    assert caps.pcie.max_read_request == lspci.max_read_request
    assert caps.sriov is None and not caps.extended_readable


def test_recorded_connectx7_text_matches_what_the_hgx_fixture_models():
    """The recorded ConnectX-7 PF: ACS capability that supports nothing, MaxReadReq 512,
    SR-IOV, no ATS capability while firmware ATS is off. The HGX fixture's NICs copy that."""
    device, = parse_lspci_verbose(recorded("lspci_vvv/cx7-pf-asus-esc8000a-e12.txt")).values()
    assert device.port_type == "endpoint"
    assert device.max_read_request == 512
    assert device.acs_supported == set() and device.acs_enabled == set()
    assert not device.ats_present
    assert device.sriov_total_vfs == 16 and device.sriov_num_vfs == 0
    assert device.numa_node == 0 and device.driver == "mlx5_core"
    gpu, = parse_lspci_verbose(recorded("lspci_vvv/gpu-rtx6000ada-asus-esc8000a-e12.txt")).values()
    assert gpu.max_read_request == 512 and gpu.port_type == "legacy_endpoint"


def test_hex_dump_parser_rejects_gaps():
    with pytest.raises(ValueError, match="offset"):
        parse_lspci_hex_dump("01:00.0 x\n00: 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff\n"
                             "20: 00 11\n")
