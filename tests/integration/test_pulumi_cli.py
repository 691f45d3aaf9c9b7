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


def test_preview_up_refresh_destroy(project, tmp_path):
    from pulumi import automation as auto

    env = {"PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
           "PULUMI_CONFIG_PASSPHRASE": "vela-test-passphrase"}
    (tmp_path / "state").mkdir()
    stack = auto.create_or_select_stack(
        stack_name="ci", work_dir=str(project),
        opts=auto.LocalWorkspaceOptions(env_vars={**os.environ, **env}))
    try:
        stack.set_config("vela:nodes", auto.ConfigValue(value=json.dumps([])))
        stack.preview()
        result = stack.up()
        assert result.outputs["nodes"].value == []
        stack.refresh()
        stack.set_config("vela:nodes", auto.ConfigValue(value=json.dumps(
            [{"name": "n", "address": "10.0.0.1;reboot", "hostKey": "x"}])))
        with pytest.raises(auto.errors.CommandError, match=r"vela:nodes\[0\] is invalid"):
            stack.preview()
    finally:
        stack.destroy()
        stack.workspace.remove_stack("ci")
