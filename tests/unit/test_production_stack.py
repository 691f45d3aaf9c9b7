"""The example production stack (Pulumi.production-example.yaml) previews cleanly: the program
declares it, every resource passes the provider's check through the gRPC server (what
`pulumi preview` calls), and each resource kind plans against the HGX A100 fixture's facts:
HostTuning's changes, SriovPool's VFs on the ConnectX-6 ports, GpuVm's placement of 8 GPUs
with their paired NIC ports under the same switches, and a domain XML the installed libvirt's
schema accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from providers.facts import gather_facts
from providers.gpu_vm.placement import place
from providers.gpu_vm.spec import GpuVmArgs
from providers.gpu_vm.xml.domain import domain as domain_xml
from providers.gpu_vm.xml.domain import render
from providers.gpu_vm.xml.schema import validate
from providers.gpu_vm.xml.spec import DomainSpec
from providers.host import LocalHost
from providers.host_tuning.plan import plan as host_plan
from providers.host_tuning.preflight import preflight as host_preflight
from providers.host_tuning.provider import observe
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import desired_target as host_target
from providers.host_tuning.target import select_topology
from providers.sriov_pool.bootunit import vf_address
from providers.sriov_pool.observe import PoolObservations
from providers.sriov_pool.plan import plan as pool_plan
from providers.sriov_pool.preflight import preflight as pool_preflight
from providers.sriov_pool.spec import SriovPoolArgs
from providers.sriov_pool.target import desired_target as pool_target
from providers.sriov_pool.target import find_pf
from tests.support.fakekernel import firmware_standin
from tests.support.hgx import hgx_a100
from tests.support.program import run_program
from tests.support.provider_harness import PROJECT_ROOT, ProviderServer
from tests.support.recorded import recorded


@pytest.fixture(scope="module")
def run():
    document = yaml.safe_load((PROJECT_ROOT / "Pulumi.production-example.yaml").read_text())
    config = {key: value if isinstance(value, str) else json.dumps(value)
              for key, value in document["config"].items()}
    config["vela:sshPrivateKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nexample\n"
    return run_program(config, stack="production-example")


def _hgx(tmp_path_factory, nic_vfs: int):
    fake, layout = hgx_a100(nic_vfs=nic_vfs,
                            grub_defaults=recorded("files/etc-default-grub-debian12.txt"))
    host = LocalHost(str(fake.write(tmp_path_factory.mktemp("hgx"))))
    return host, gather_facts(host), layout


@pytest.fixture(scope="module")
def hgx(tmp_path_factory):
    return _hgx(tmp_path_factory, nic_vfs=0)


@pytest.fixture(scope="module")
def hgx_with_vfs(tmp_path_factory):
    """The same node once its pools exist: one VF on every port."""
    return _hgx(tmp_path_factory, nic_vfs=1)


def test_the_program_declares_four_nodes_on_four_provider_shards(run):
    assert len(run.of_type("HostTuning")) == 4 and len(run.of_type("GpuVm")) == 4
    assert len(run.of_type("SriovPool")) == 16
    assert len([r for r in run.registrations if r.type.startswith("pulumi:providers:")]) == 4


def test_every_resource_passes_check_through_the_provider_server(run):
    with ProviderServer(config={"vela:sshPrivateKey": "unused at check"}) as server:
        for registration in run.registrations:
            if registration.type.startswith("pulumi-python:dynamic"):
                _, failures = server.check(registration.name, {}, registration.inputs)
                assert failures == [], (registration.name, failures)


def test_host_tuning_plans_against_hgx_facts(run, hgx):
    host, _, layout = hgx
    inputs = _inputs(run.by_name()["hgx-01-host"])
    # The host would have mlxconfig on PATH; the fixture has the stand-in.
    spec = HostTuningArgs.model_validate(
        {**inputs, "firmware": {"tool": firmware_standin(Path(host.sysroot))}})
    now = observe(host, spec)
    facts, observed = now.facts, now.observed
    topology = select_topology(spec, facts)
    target = host_target(spec, facts, observed, topology)
    assert host_preflight(spec, facts, observed, topology, target) == []
    current = host_plan(target, facts, observed)
    kinds = {change.kind for change in current.changes}
    assert {"kernel-args", "driver", "register"} <= kinds
    assert current.reboots_required >= 1  # rolling: at most 2 nodes reboot at once


def test_sriov_pools_and_the_vm_plan_against_hgx_facts(run, hgx, hgx_with_vfs):
    _, facts, layout = hgx
    _, later, _ = hgx_with_vfs
    by_name = run.by_name()
    vfs = []
    for switch in layout.switches:
        interface = switch.nic_interfaces[0]
        spec = SriovPoolArgs.model_validate(_inputs(by_name[f"hgx-01-{interface}"]))
        observed = PoolObservations(pf=switch.nic_pfs[0], netdev=interface, autoprobe="1")
        pf = find_pf(spec, facts, observed)
        assert pool_preflight(spec, pf) == []
        changes = pool_plan(spec, pool_target(spec, facts, observed, pf), facts, observed,
                            pf).changes
        assert changes[0].kind == "autoprobe" and changes[1].kind == "vf-count"
        # Where the VF will appear once created: the PF's SR-IOV offset and stride decide.
        address = vf_address(pf, 0)
        assert address == later.pci[pf.address].virtfns[0].address
        vfs.append({"index": 0, "address": address, "pf": pf.address})
    vm = GpuVmArgs.model_validate({**_inputs(by_name["hgx-01-vm0"]), "vfs": vfs})
    layout_vm = place(vm, later, {})
    gpus = [d for d in layout_vm.devices if d.kind == "gpu"]
    assert sorted(d.host_address for d in gpus) == sorted(layout.gpus)
    for device in (d for d in layout_vm.devices if d.kind == "vf"):
        assert device.paired_with in {gpu.host_address for gpu in gpus}
    # libvirt 9.0 (Debian 12) takes maxphysaddr mode="emulate" only; 9.3+ gets passthrough.
    element = domain_xml(DomainSpec(name=vm.name, uuid="00000000-0000-4000-8000-000000000001",
                                    domain_type="kvm", cpu_model=vm.cpu_model,
                                    phys_bits_mode="emulate", hugepage_kib=1048576,
                                    firmware=vm.firmware,
                                    disk="/var/lib/libvirt/images/vela/hgx-01-vm0.qcow2"),
                         layout_vm)
    validate(element)
    # 8 GPUs, 4 VFs and the baseboard's 6 NVSwitches (a whole-node guest has NVLink).
    assert layout_vm.nvlink is True
    assert render(element).count("<hostdev ") == 8 + 4 + len(layout.nvswitches) == 18


def _inputs(registration) -> dict:
    return {key: value for key, value in registration.inputs.items() if key != "__provider"}
