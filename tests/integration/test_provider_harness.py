"""Providers driven through the real dynamic-provider gRPC server, as `pulumi up` drives them."""

from __future__ import annotations

import pytest

from tests.support.probe_provider import HostProbe
from tests.support.provider_harness import (
    UNKNOWN,
    ProviderCallError,
    ProviderServer,
    with_provider,
)
from tests.support.threads import run_concurrently


@pytest.fixture
def probe_inputs(sshd, hgx):
    root, _ = hgx
    return with_provider(HostProbe(), {"address": "127.0.0.1", "port": sshd.port,
                                       "user": sshd.user, "hostKey": sshd.host_key,
                                       "sysroot": str(root)})


@pytest.fixture
def server(sshd, tmp_path):
    with ProviderServer(config={"vela:sshPrivateKey": sshd.client_key_text},
                        log=tmp_path / "provider.log") as running:
        yield running


def test_check_accepts_floats_and_unknowns_and_names_bad_fields(server, probe_inputs):
    inputs, failures = server.check("node0", {}, probe_inputs)
    assert failures == [] and inputs["port"] == probe_inputs["port"]  # arrived as a float
    _, failures = server.check("node0", {}, {**probe_inputs, "address": UNKNOWN})
    assert failures == []
    _, failures = server.check("node0", {}, {**probe_inputs, "address": "10.0.0.1;reboot",
                                             "port": 0, "hostKey": "ssh-ed25519 !!"})
    fields = {field for field, _ in failures}
    assert fields == {"address", "port", "hostKey"}
    assert any("TCP port" in reason for _, reason in failures)


def test_create_read_diff_through_the_server(server, probe_inputs, hgx, sshd):
    _, layout = hgx
    id_, outs = server.create("node0", probe_inputs)
    assert id_ == f"127.0.0.1:{sshd.port}"
    assert outs["gpus"] == layout.gpus and outs["numaNodes"] == 2
    assert outs["hostname"] == "hgx-a100-01" and outs["__provider"] == probe_inputs["__provider"]
    assert server.read("node0", id_, outs) == (id_, outs)
    assert server.diff("node0", id_, outs, probe_inputs).changes is False
    moved = server.diff("node0", id_, outs, {**probe_inputs, "port": sshd.port + 1})
    assert moved.changes is True and moved.replaces == ["port"]


def test_concurrent_calls_share_one_ssh_connection(server, probe_inputs, sshd, hgx):
    _, layout = hgx
    logins = sshd.logins()
    results = run_concurrently(lambda index: server.create(f"node{index}", probe_inputs)[1],
                               list(range(8)))
    assert [outs["gpus"] for outs in results] == [layout.gpus] * 8
    assert sshd.logins() - logins == 1


def test_errors_reach_the_user_as_one_clear_line(sshd, probe_inputs, tmp_path):
    """What the engine shows the user is the gRPC error's details: for a vela error, its message
    and nothing else (no Python traceback)."""
    with ProviderServer(config={}, log=tmp_path / "provider.log") as server, \
            pytest.raises(ProviderCallError) as caught:
        server.create("node0", probe_inputs)
    assert caught.value.details == "no SSH key: set it with `pulumi config set --secret " \
        "sshPrivateKey < ~/.ssh/id_ed25519`"
    assert not caught.value.traceback


def test_host_key_refusal_surfaces_through_the_server(server, probe_inputs, sshd, tmp_path):
    from tests.support.sshd import keygen

    other = keygen(tmp_path / "other")
    with pytest.raises(ProviderCallError) as caught:
        server.create("node0", {**probe_inputs, "hostKey": other})
    assert "HOST KEY CHANGED" in caught.value.message
