"""A deployed stack read back through the Automation API (components/deployed.py), as
`python -m acceptance` and `python -m topology --stack` read it: an empty cluster deployed by
the real engine on a local file backend, its outputs, its config without secrets but those asked
for, and what a missing stack or a wrong passphrase says."""

from __future__ import annotations

import os

import pytest

from components.deployed import read_deployed
from tests.support.cli import PASSPHRASE, CliStack, config_strings
from tests.support.sshd import keygen
from topology.__main__ import main

KEY = "vela:sshPrivateKey"


@pytest.fixture
def deployed(tmp_path):
    cli_stack = CliStack(tmp_path, "ci")
    keygen(tmp_path / "id")
    cli_stack.configure(config_strings({"vela:nodes": [], "vela:shape": {"vmsPerNode": 0},
                                        "vela:allowEmpty": "true",
                                        KEY: (tmp_path / "id").read_text()}), secret_keys=(KEY,))
    cli_stack.up()
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{cli_stack.state_dir}",
           "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE, "PULUMI_HOME": str(tmp_path / "pulumi-home")}
    yield cli_stack, env
    cli_stack.destroy()
    cli_stack.remove()


def test_outputs_and_config_are_read_back_with_only_the_secrets_asked_for(deployed, tmp_path,
                                                                          capsys):
    cli_stack, env = deployed
    read = read_deployed("ci", work_dir=cli_stack.work_dir, env=env)
    assert read.outputs["vmAddresses"] == {} and read.outputs["summary"]["nodes"] == 0
    assert read.config == {"vela:allowEmpty": "true", "vela:nodes": "[]",
                           "vela:shape": '{"vmsPerNode": 0}'}
    assert read.secrets == {}
    with_key = read_deployed("ci", work_dir=cli_stack.work_dir, env=env, secrets=(KEY,))
    assert with_key.secrets == {KEY: (tmp_path / "id").read_text()}
    assert "PRIVATE KEY" not in repr(with_key)
    with pytest.raises(ValueError, match="no stack nope in the backend file://.*scripts/up"):
        read_deployed("nope", work_dir=cli_stack.work_dir, env=env)
    with pytest.raises(ValueError, match=r"\(incorrect passphrase\): run this with the "
                                         r"PULUMI_BACKEND_URL and PULUMI_CONFIG_PASSPHRASE"):
        read_deployed("ci", work_dir=cli_stack.work_dir,
                      env={**env, "PULUMI_CONFIG_PASSPHRASE": "wrong"})
    assert main(["--stack", "ci", "--out", str(tmp_path / "out")],
                read=lambda name: read_deployed(name, work_dir=cli_stack.work_dir,
                                                env=env)) == 2
    assert "stack ci names no nodes" in capsys.readouterr().err
