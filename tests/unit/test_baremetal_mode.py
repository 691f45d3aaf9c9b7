"""What `mode: baremetal` means: the node runs its jobs on the host itself, with no VMs.

Its GPUs stay with their host driver (HostTuning binds nothing to vfio-pci), and the ACS it sets
on the GPU-NIC paths (0: peer traffic straight through the switch, for GPUDirect) leaves those
devices without the IOMMU isolation a passed-through device needs. So vfio is off by default in
baremetal mode, `vfio: true` there is refused at check, and VelaCluster refuses a config that
puts VMs (GpuVm) on a baremetal node; each refusal is one clear message, never a traceback.
"""

from __future__ import annotations

import json

import pulumi
import pytest
from pydantic import ValidationError

from components.cluster_spec import ClusterArgs
from providers.host import LocalHost
from providers.host_tuning.observe import MODPROBE_CONF, MODULES_CONF
from providers.host_tuning.plan import plan
from providers.host_tuning.provider import HostTuningProvider, observe
from providers.host_tuning.spec import HostTuningArgs
from providers.host_tuning.target import desired_target, select_topology
from tests.support.hgx import hgx_a100
from tests.support.program import HOST_KEY, base_config, lab_like_nodes, run_program
from tests.support.recorded import recorded

DEBIAN_GRUB = recorded("files/etc-default-grub-debian12.txt")
HOST = {"address": "10.0.0.1", "hostKey": HOST_KEY}


def _spec(**inputs) -> HostTuningArgs:
    return HostTuningArgs.model_validate({**HOST, "firmware": {"enabled": False}, **inputs})


def _look(tmp_path, spec: HostTuningArgs):
    fake, layout = hgx_a100(grub_defaults=DEBIAN_GRUB)
    host = LocalHost(str(fake.write(tmp_path)))
    now = observe(host, spec)
    topology = select_topology(spec, now.facts)
    return now, layout, desired_target(spec, now.facts, now.observed, topology)


# -- HostTuning ---------------------------------------------------------------------------------

def test_vfio_follows_the_mode_by_default():
    assert _spec().vfio is True
    assert _spec(mode="baremetal").vfio is False
    assert _spec(mode="vm", vfio=False).vfio is False  # a VM host may still leave it off


def test_a_baremetal_host_binds_nothing_to_vfio_pci(tmp_path):
    spec = _spec(mode="baremetal", hugepages={"total": 16})
    now, layout, desired = _look(tmp_path, spec)
    assert desired.drivers == {} and desired.modules == {}
    assert not any(key.startswith("vfio") for key in desired.kernel_args)
    assert desired.files[MODULES_CONF] is None
    assert "vfio" not in (desired.files[MODPROBE_CONF] or "")
    current = plan(desired, now.facts, now.observed)
    assert [change for change in current.changes if change.kind == "driver"] == []
    assert all("vfio" not in change.detail for change in current.changes)
    # What baremetal mode still does: the IOMMU in pass-through, ACS 0 on the GPU-NIC paths.
    assert desired.kernel_args["iommu"] == "iommu=pt"
    acs = [register for register in desired.registers.values() if register.what == "ACS control"]
    assert acs and all(register.value == 0 for register in acs)


def test_vm_mode_still_binds_the_gpus_to_vfio_pci(tmp_path):
    _, layout, desired = _look(tmp_path, _spec())
    assert set(desired.drivers) >= set(layout.gpus)
    assert set(desired.drivers.values()) == {"vfio-pci"}


def test_vfio_true_in_baremetal_mode_is_refused_at_check():
    with pytest.raises(ValidationError, match="baremetal") as caught:
        _spec(mode="baremetal", vfio=True)
    message = str(caught.value)
    assert "mode: vm" in message and "vfio" in message
    inputs = {**HOST, "mode": "baremetal", "vfio": True}
    failures = HostTuningProvider().check({}, inputs).failures
    assert [failure.property for failure in failures] == ["vfio"]
    reason = failures[0].reason
    assert "baremetal" in reason and "mode: vm" in reason and "Traceback" not in reason


# -- VelaCluster --------------------------------------------------------------------------------

def _config(**changes) -> dict[str, str]:
    config = base_config(lab_like_nodes(2))
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value if isinstance(value, str) else json.dumps(value)
    return config


BAREMETAL_SHAPE = {"gpusPerVm": 8, "nicPorts": ["ens1f0", "ens2f0"], "vfsPerPort": 4}


def test_a_baremetal_cluster_declares_no_vms():
    run = run_program(_config(**{"vela:mode": "baremetal", "vela:shape": BAREMETAL_SHAPE,
                                 "vela:image": None}))
    assert run.of_type("GpuVm") == []
    hosts, pools = run.of_type("HostTuning"), run.of_type("SriovPool")
    assert len(hosts) == 2 and {host.inputs["mode"] for host in hosts} == {"baremetal"}
    assert all("vfio" not in host.inputs for host in hosts)  # HostTuning's default: off
    assert len(pools) == 4
    # No VM to pass VFs to: they stay on the NIC's own VF driver, for jobs on the host.
    assert {pool.inputs["driver"] for pool in pools} == {"host"}
    assert run.exports == {} or run.namespace["cluster"].vms == {}


@pytest.mark.parametrize("changes, expected", [
    ({"vela:mode": "baremetal"},
     r"mode: baremetal.*no VMs.*vmsPerNode is 1 on node-0, node-1.*vmsPerNode: 0.*mode: vm"),
    ({"vela:hostTuning": {"mode": "baremetal"}},
     r"hostTuning.mode: baremetal.*vmsPerNode is 1 on node-0, node-1"),
    ({"vela:mode": "baremetal", "vela:shape": BAREMETAL_SHAPE, "vela:image": None,
      "vela:nodeOverrides": {"node-1": {"vmsPerNode": 1, "wholeNodes": True}}},
     r"vmsPerNode is 1 on node-1\b"),
    ({"vela:mode": "baremetal", "vela:shape": BAREMETAL_SHAPE, "vela:image": None,
      "vela:hostTuning": {"vfio": True}},
     r"hostTuning.vfio: true binds the GPUs to vfio-pci.*mode: baremetal.*leave vfio out"),
])
def test_vms_on_a_baremetal_node_are_refused_with_one_clear_message(changes, expected):
    with pytest.raises(pulumi.RunError, match=expected) as caught:
        run_program(_config(**changes))
    assert "Traceback" not in str(caught.value)
    assert str(caught.value).startswith("invalid stack config: ")


def test_cluster_args_from_python_refuse_vms_on_baremetal_nodes():
    nodes = [{"name": "gpu-0", "address": "10.0.0.1", "hostKey": HOST_KEY}]
    shape = {"vmsPerNode": 2, "wholeNodes": True}
    with pytest.raises(ValidationError, match="vmsPerNode is 2 on gpu-0"):
        ClusterArgs.model_validate({"nodes": nodes, "shape": shape, "mode": "baremetal",
                                    "image": {"path": "/var/lib/vela/base.qcow2"}})
    bare = ClusterArgs.model_validate({"nodes": nodes, "shape": {}, "mode": "baremetal"})
    assert bare.shape_of(bare.nodes[0]).vms_per_node == 0
    vm = ClusterArgs.model_validate({"nodes": nodes, "shape": {"wholeNodes": True},
                                     "image": {"path": "/var/lib/vela/base.qcow2"}})
    assert vm.shape_of(vm.nodes[0]).vms_per_node == 1  # vm mode keeps its default
