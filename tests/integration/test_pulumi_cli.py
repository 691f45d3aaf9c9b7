"""The real Pulumi CLI, through the Automation API: preview, up, refresh, destroy.

Runs wherever `pulumi` is on PATH and is reported as skipped elsewhere (the CLI cannot be
installed on every machine; everything below it is proven by the other tests). The project is
copied to a temporary directory so the test never writes stack files into the checkout.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.support.provider_harness import PROJECT_ROOT

pytestmark = pytest.mark.skipif(shutil.which("pulumi") is None,
                                reason="the Pulumi CLI is not on PATH (see README)")


@pytest.fixture
def project(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    for name in ["Pulumi.yaml", "__main__.py", "requirements.txt"]:
        shutil.copy(PROJECT_ROOT / name, work / name)
    for package in ["providers", "components"]:
        shutil.copytree(PROJECT_ROOT / package, work / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (work / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    return work


def _stack(project, tmp_path, name: str):
    from pulumi import automation as auto

    env = {"PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
           "PULUMI_CONFIG_PASSPHRASE": "vela-test-passphrase"}
    (tmp_path / "state").mkdir(exist_ok=True)
    return auto.create_or_select_stack(
        stack_name=name, work_dir=str(project),
        opts=auto.LocalWorkspaceOptions(env_vars={**os.environ, **env}))


def test_preview_up_refresh_destroy_without_nodes(project, tmp_path):
    from pulumi import automation as auto

    stack = _stack(project, tmp_path, "ci")
    try:
        stack.set_config("vela:nodes", auto.ConfigValue(value=json.dumps([])))
        stack.set_config("vela:shape", auto.ConfigValue(value=json.dumps({"vmsPerNode": 0})))
        stack.preview()
        result = stack.up()
        assert result.outputs["summary"].value["nodes"] == 0
        stack.refresh()
        stack.set_config("vela:nodes", auto.ConfigValue(value=json.dumps(
            [{"name": "n", "address": "10.0.0.1;reboot", "hostKey": "x"}])))
        with pytest.raises(auto.errors.CommandError, match=r"vela:nodes\[0\] is invalid"):
            stack.preview()
    finally:
        stack.destroy()
        stack.workspace.remove_stack("ci")


@pytest.mark.slow
def test_the_dev_stack_on_a_lab_host(project, tmp_path):
    """The dev stack's settings on one lab host, with the key as secret config and two provider
    shards: up, up again (no changes), refresh, no secret in the state, destroy."""
    import yaml
    from pulumi import automation as auto

    from lab.hosts import Lab

    lab = Lab(tmp_path / "lab")
    lab.up(1)
    stack = _stack(project, tmp_path, "lab")
    try:
        document = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text())["config"]
        for key, value in document.items():
            if key != "vela:labHosts":
                stack.set_config(key, auto.ConfigValue(
                    value=value if isinstance(value, str) else json.dumps(value)))
        stack.set_config("vela:inventoryFile", auto.ConfigValue(value=str(lab.directory / "inventory.json")))
        stack.set_config("vela:providerShards", auto.ConfigValue(value="2"))
        private_key = lab.key_path.read_text()
        stack.set_config("vela:sshPrivateKey", auto.ConfigValue(value=private_key, secret=True))
        stack.preview()
        result = stack.up()
        addresses = result.outputs["vmAddresses"].value
        assert addresses["lab-0-vm0"] and "slots=1" in result.outputs["hostfile"].value
        again = stack.up()
        assert again.summary.resource_changes.get("update", 0) == 0
        stack.refresh()
        state = json.dumps(stack.export_stack().deployment)
        body = "".join(private_key.strip().splitlines()[1:-1])
        assert body[:40] not in state and "PRIVATE KEY" not in state
    finally:
        stack.destroy()
        stack.workspace.remove_stack("lab")
        lab.down()
