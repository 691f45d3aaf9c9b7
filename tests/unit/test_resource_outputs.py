"""The outputs each resource class declares are the attributes the engine really sets on it.

A dynamic resource gets one attribute per key of the properties it is registered with, named
exactly as the key (pulumi/resource.py, `transfer_properties`: no camelCase translation for
dynamic resources), so the declared annotations must be the camelCase output keys.
"""

from __future__ import annotations

import pulumi
import pytest

from providers.gpu_vm import GpuVm
from providers.gpu_vm.provider import OUTPUT_KEYS as GPU_VM_OUTPUTS
from providers.host_tuning import HostTuning
from providers.host_tuning.provider import OUTPUT_KEYS as HOST_TUNING_OUTPUTS
from providers.sriov_pool import SriovPool
from providers.sriov_pool.provider import OUTPUT_KEYS as SRIOV_POOL_OUTPUTS


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return [f"{args.name}-id", dict(args.inputs)]

    def call(self, args):
        return {}


RESOURCES = [(HostTuning, HOST_TUNING_OUTPUTS), (SriovPool, SRIOV_POOL_OUTPUTS),
             (GpuVm, GPU_VM_OUTPUTS)]


@pytest.mark.parametrize("resource, keys", RESOURCES, ids=lambda value: getattr(
    value, "__name__", ""))
def test_declared_outputs_are_the_output_keys(resource, keys):
    assert list(resource.__annotations__) == keys


@pytest.mark.parametrize("resource, keys", RESOURCES, ids=lambda value: getattr(
    value, "__name__", ""))
def test_every_declared_output_is_an_attribute_of_a_registered_resource(resource, keys):
    pulumi.runtime.set_mocks(_Mocks(), preview=False)
    try:
        made = resource("probe", {"address": "10.0.0.1"})
        missing = [key for key in resource.__annotations__
                   if not isinstance(getattr(made, key, None), pulumi.Output)]
    finally:
        pulumi.runtime.settings.reset_options()
    assert missing == []
