"""The real Pulumi engine (the CLI that scripts/setup builds), running the vela program inline
through the Automation API: what the engine decides (create, same, update, replace, delete and
their order), what it keeps in state, and what it refuses.

Never skipped: without the CLI these tests fail and say to run scripts/setup. The lab test is
in tests/lab/test_cluster_cli_lab.py.
"""

from __future__ import annotations

import json

import pytest
from pulumi import automation as auto

from tests.support.cli import CliStack, config_strings

EMPTY = {"vela:nodes": [], "vela:shape": {"vmsPerNode": 0}}  # a valid cluster of no nodes


@pytest.fixture
def stack(tmp_path):
    cli_stack = CliStack(tmp_path, "ci")
    yield cli_stack
    cli_stack.destroy()
    cli_stack.remove()


def test_an_empty_cluster_previews_deploys_refreshes_and_destroys(stack):
    stack.configure(config_strings(EMPTY))
    preview = stack.preview()
    assert preview.ops() == {}  # no node, so no vela resource; the component alone
    assert preview.changes.get("create", 0) >= 1

    result = stack.up()
    assert result.outputs["summary"]["nodes"] == 0
    assert result.outputs["vmAddresses"] == {}
    assert stack.up().changes == {"same": result.changes["create"]}

    refresh = stack.refresh()
    assert set(refresh.changes) <= {"same"}
    assert stack.destroy().changes.get("delete", 0) == result.changes["create"]
    assert stack.resources() == []


@pytest.mark.parametrize(("key", "value", "words"), [
    ("vela:nodes", [{"name": "n", "address": "10.0.0.1;reboot", "hostKey": "x"}],
     r"vela:nodes\[0\] is invalid: address"),
    ("vela:maxRebootingNodes", "two", r"vela:maxRebootingNodes must be a whole number"),
])
def test_a_bad_config_value_fails_preview_naming_the_key(stack, key, value, words):
    stack.configure(config_strings({**EMPTY, key: value}))
    with pytest.raises(auto.errors.CommandError, match=words) as failure:
        stack.preview()
    assert "Traceback" not in str(failure.value)
    assert stack.resources() == []


def test_the_ssh_key_reaches_the_state_only_encrypted(stack):
    """A secret config value, with provider shards: each explicit provider holds the key as an
    input; the state must keep it encrypted, as the CLI's passphrase secrets manager does."""
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAvelatestkeybody0123456789\n" \
          "-----END OPENSSH PRIVATE KEY-----\n"
    stack.configure(config_strings({**EMPTY, "vela:providerShards": "2",
                                    "vela:sshPrivateKey": key}),
                    secret_keys=("vela:sshPrivateKey",))
    stack.up()
    state = stack.state_text()
    assert "AAAAvelatestkeybody" not in state and "PRIVATE KEY" not in state
    providers = [r for r in stack.resources() if r["type"] == "pulumi:providers:pulumi-python"]
    assert len(providers) == 2
    assert all(json.dumps(r["inputs"]).count("ciphertext") for r in providers)
